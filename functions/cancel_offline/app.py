"""cancel_offline: run by a one-time grace schedule GRACE_SECONDS after a disconnect.

Scheduler invokes it asynchronously, so at least once and up to a minute late: the
rules recheck presence before acting and every write is conditional (see
agent_channel.grace.cancellation). Bad input is logged and answered with an error result,
never raised, because a retry of the same input cannot succeed. A storage failure is
raised, so Lambda's asynchronous retries run the (idempotent) cancellation again.
"""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.config import settings
from agent_channel.grace import cancellation
from agent_channel.grace.scheduler import GraceCancellation
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.invocation import lambda_handler
from agent_channel.observability import bind_ids, logger

MAX_TOKEN_LENGTH = 64
MAX_SESSION_ID_LENGTH = 256

store = wiring.presence_store()
book = wiring.task_book()


class BadInput(ValueError):
    pass


def parse(event: Any) -> GraceCancellation:
    """The schedule's input: ``{agent_id, subscription_token, session_id?}``."""
    if not isinstance(event, dict):
        raise BadInput("the input is not an object")
    agent_id = event.get("agent_id")
    if isinstance(agent_id, str) and agent_id.isascii() and agent_id.isdigit():
        agent_id = int(agent_id)
    if isinstance(agent_id, bool) or not isinstance(agent_id, int) or agent_id <= 0:
        raise BadInput("agent_id must be a positive integer")
    token = event.get("subscription_token")
    # Empty is legitimate: the sweeper schedules with the token it read, maybe none.
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise BadInput("subscription_token must be a string")
    session_id = event.get("session_id")
    if session_id is not None and (
        not isinstance(session_id, str) or len(session_id) > MAX_SESSION_ID_LENGTH
    ):
        raise BadInput("session_id must be a string")
    return GraceCancellation(agent_id, token, session_id or None)


@lambda_handler
def handler(event: Any, context: Any) -> dict[str, Any]:
    try:
        request = parse(event)
    except BadInput as error:
        # Never log the input itself: it carries a token.
        logger.error("bad grace cancellation input", extra={"error": str(error)})
        return {"ok": False, "error": str(error)}
    bind_ids(agent_id=request.agent_id, request_id=getattr(context, "aws_request_id", None))
    scope = "session" if request.session_id else "agent"
    try:
        result = cancellation.cancel_offline(store, book, settings(), request)
    except Exception:
        logger.exception("grace cancellation failed; Lambda will retry", extra={"scope": scope})
        raise
    summary = {"ok": True, "scope": scope, **result.summary()}
    logger.info("grace cancellation done", extra=summary)
    return summary


cold_start.ready()
