"""$disconnect: remove the connection; the last live session out clears routing and
schedules the grace cancellation. Best-effort in API Gateway, so idempotent."""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.config import settings
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.events import SocketEvent, response
from agent_channel.lambda_kit.route import socket_route
from agent_channel.observability import logger
from agent_channel.presence import rules

store = wiring.presence_store()
scheduler = wiring.grace_scheduler()


@socket_route
def handler(event: SocketEvent) -> dict[str, Any]:
    caller = event.caller
    if caller is None or caller.stream is None:
        logger.warning("disconnect without a known caller")
        return response(200)
    try:
        outcome = rules.disconnect(
            store,
            scheduler,
            settings(),
            connection_id=event.connection_id,
            stream=caller.stream,
            agent_id=caller.agent_id,
            holds_lease=caller.holds_lease,
        )
    except Exception:
        # As the reference did: log with context and return. The sweeper repairs
        # whatever a failed storage call left behind.
        logger.exception("disconnect failed; the sweeper will settle presence")
        return response(200)
    logger.info("disconnected", extra={"outcome": outcome.value})
    # API Gateway drops a $disconnect answer; the outcome is for logs and tests.
    return response(200, outcome.value)


cold_start.ready()
