"""$connect's REQUEST authorizer: 401 without a valid token, 403 for a foreign target.

Its context reaches every later route of the connection as
``requestContext.authorizer``, so those routes know the caller without a read.
"""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.identity.authorizer import AuthVerdict, authorize
from agent_channel.lambda_kit.invocation import lambda_handler
from agent_channel.observability import bind_ids, clear_ids, logger

# API Gateway answers 401 when a Lambda authorizer fails with exactly this message.
UNAUTHORIZED = "Unauthorized"


def _policy(effect: str, resource: str, principal: str) -> dict[str, Any]:
    return {
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}],
        },
    }


def _strings(value: Any) -> dict[str, str]:
    """A header or query map as API Gateway sends it: string values only. Anything
    else (a malformed or hand-made event) is dropped rather than stringified, so a
    ``None`` can never become the token "None"."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@lambda_handler
def handler(event: Any, context: Any) -> dict[str, Any]:
    clear_ids()
    if not isinstance(event, dict):
        # Not an API Gateway event at all: no token can be read from it.
        logger.warning("malformed authorizer event")
        raise PermissionError(UNAUTHORIZED)
    headers = {k.lower(): v for k, v in _strings(event.get("headers")).items()}
    query = _strings(event.get("queryStringParameters"))
    resource = _optional_str(event.get("methodArn")) or "*"
    context_map = event.get("requestContext")
    if isinstance(context_map, dict):
        bind_ids(
            connection_id=_optional_str(context_map.get("connectionId")),
            request_id=_optional_str(context_map.get("requestId")),
        )
    decision = authorize(headers, query)
    if decision.verdict is AuthVerdict.FORBIDDEN:
        # Checked first: a forbidden verdict carries no caller, and must answer
        # 403 (a Deny), not 401.
        logger.info("connect refused: target is not the caller's")
        return _policy("Deny", resource, "forbidden")
    if decision.verdict is AuthVerdict.UNAUTHORIZED or decision.caller is None:
        logger.info("connect refused: no valid token")
        raise PermissionError(UNAUTHORIZED)
    principal = str(decision.caller.user_id)
    bind_ids(agent_id=decision.caller.agent_id)
    return {**_policy("Allow", resource, principal), "context": decision.caller.as_context()}


cold_start.ready()
