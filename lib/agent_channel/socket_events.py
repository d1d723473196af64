"""Typed views of the events API Gateway sends to the WebSocket route functions.

Parsing never raises: a malformed event yields None and the handler answers
with a clear error instead of a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agent_channel.presence_types import Subscription, agent_stream, topic_stream

TARGET_CHANNEL_AGENT = "channel_agent"
TARGET_AGENT = "agent"
TARGET_TOPIC = "topic"
TARGET_NONE = "none"


@dataclass(frozen=True)
class Caller:
    """Who opened the socket and what it subscribed to, as the $connect authorizer
    established it. API Gateway hands this context to every later route of the
    connection, so no route needs a read to learn it."""

    user_id: int
    target: str
    agent_id: int | None = None
    topic_id: int | None = None
    session_id: str = ""

    @property
    def holds_lease(self) -> bool:
        return self.target == TARGET_CHANNEL_AGENT

    @property
    def stream(self) -> str | None:
        if self.target in (TARGET_CHANNEL_AGENT, TARGET_AGENT) and self.agent_id is not None:
            return agent_stream(self.agent_id)
        if self.target == TARGET_TOPIC and self.topic_id is not None:
            return topic_stream(self.topic_id)
        return None

    def subscription(self, connection_id: str) -> Subscription | None:
        if not self.holds_lease or self.agent_id is None:
            return None
        return Subscription(connection_id, self.user_id, self.agent_id, self.session_id)

    def as_context(self) -> dict[str, str]:
        """The authorizer's ``context`` map (API Gateway allows only scalar values)."""
        return {
            "user_id": str(self.user_id),
            "target": self.target,
            "agent_id": "" if self.agent_id is None else str(self.agent_id),
            "topic_id": "" if self.topic_id is None else str(self.topic_id),
            "session_id": self.session_id,
        }

    @classmethod
    def from_context(cls, context: Any) -> Caller | None:
        if not isinstance(context, dict):
            return None
        try:
            user_id = int(context["user_id"])
            target = str(context["target"])
            agent_raw = str(context.get("agent_id") or "")
            topic_raw = str(context.get("topic_id") or "")
            return cls(
                user_id=user_id,
                target=target,
                agent_id=int(agent_raw) if agent_raw else None,
                topic_id=int(topic_raw) if topic_raw else None,
                session_id=str(context.get("session_id") or ""),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class SocketEvent:
    route_key: str
    connection_id: str
    request_id: str
    caller: Caller | None
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)

    def json_body(self) -> Any:
        """The body as JSON; raises ValueError when it is not JSON."""
        if self.body is None:
            raise ValueError("the message has no body")
        return json.loads(self.body)


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
