"""Typed views of the events API Gateway sends to the WebSocket route functions.

Parsing never raises: a malformed event yields None and the handler answers
with a clear error instead of a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent_channel.identity.caller import Caller


@dataclass(frozen=True)
class SocketEvent:
    route_key: str
    connection_id: str
    request_id: str
    caller: Caller | None
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


def parse_socket_event(event: Any) -> SocketEvent | None:
    if not isinstance(event, dict):
        return None
    context = event.get("requestContext")
    if not isinstance(context, dict):
        return None
    connection_id = context.get("connectionId")
    if not isinstance(connection_id, str) or not connection_id:
        return None
    body = event.get("body")
    if body is not None and not isinstance(body, str):
        body = None
    if isinstance(body, str) and event.get("isBase64Encoded"):
        import base64

        try:
            body = base64.b64decode(body).decode("utf-8")
        except ValueError:
            # binascii.Error, UnicodeDecodeError, and the plain ValueError that
            # b64decode raises for a str with non-ASCII characters.
            body = None
    return SocketEvent(
        route_key=str(context.get("routeKey", "")),
        connection_id=connection_id,
        request_id=str(context.get("requestId", "")),
        caller=Caller.from_context(context.get("authorizer")),
        body=body,
        headers={k.lower(): v for k, v in _str_map(event.get("headers")).items()},
        query=_str_map(event.get("queryStringParameters")),
    )


def response(status: int, message: str = "") -> dict[str, Any]:
    """A route function's answer, shaped as API Gateway expects it."""
    shaped: dict[str, Any] = {"statusCode": status}
    if message:
        shaped["body"] = message
    return shaped
