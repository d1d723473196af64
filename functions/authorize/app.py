"""$connect's REQUEST authorizer: 401 without a valid token, 403 for a foreign target.

Its context reaches every later route of the connection as
``requestContext.authorizer``, so those routes know the caller without a read.
"""

from __future__ import annotations

from typing import Any

from agent_channel.auth import Verdict, authorize
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


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    query = {str(k): str(v) for k, v in (event.get("queryStringParameters") or {}).items()}
    resource = str(event.get("methodArn", "*"))
    clear_ids()
    context_map = event.get("requestContext") or {}
    bind_ids(
        connection_id=context_map.get("connectionId"), request_id=context_map.get("requestId")
    )
    decision = authorize(headers, query)
    if decision.verdict is Verdict.FORBIDDEN:
        # Checked first: a forbidden verdict carries no caller, and must answer
        # 403 (a Deny), not 401.
        logger.info("connect refused: target is not the caller's")
        return _policy("Deny", resource, "forbidden")
    if decision.verdict is Verdict.UNAUTHORIZED or decision.caller is None:
        logger.info("connect refused: no valid token")
        raise PermissionError(UNAUTHORIZED)
    principal = str(decision.caller.user_id)
    bind_ids(agent_id=decision.caller.agent_id)
    return {**_policy("Allow", resource, principal), "context": decision.caller.as_context()}
