"""Who opened a socket and what it subscribed to, as the $connect authorizer vouched."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from agent_channel.delivery.streams import agent_stream, topic_stream
from agent_channel.presence.model import Subscription


class Target(enum.StrEnum):
    """What a socket subscribed to."""

    CHANNEL_AGENT = "channel_agent"
    """An agent served through this channel: its sockets hold presence leases."""
    AGENT = "agent"
    """Another agent's stream, listened to without presence."""
    TOPIC = "topic"
    NONE = "none"
    """Nothing valid: the authorizer let a malformed request through for $connect to
    answer 400, which an authorizer cannot."""


@dataclass(frozen=True)
class Caller:
    """Who opened the socket and what it subscribed to, as the $connect authorizer
    established it. API Gateway hands this context to every later route of the
    connection, so no route needs a read to learn it."""

    user_id: int
    target: Target
    agent_id: int | None = None
    topic_id: int | None = None
    session_id: str = ""
    siblings: bool = False
    """A channel agent's routing was on when the authorizer read it: other sessions
    hold leases, and a crashed one's may be stale. Only $connect uses it, to reap
    them without a read of its own when there can be nothing to reap."""
    token_digest: str = ""
    """The digest of the token the socket was opened with: a restore rechecks that
    the token still exists, and a revocation finds the socket by it."""
    grace_scheduled: bool = False
    """The agent's last departure scheduled an agent-wide grace that no subscribe
    has withdrawn yet, as the authorizer read it (only $connect acts on it)."""

    def __post_init__(self) -> None:
        # A target given as its string value (an authorizer context, a test) is
        # checked and stored as the enum, so every comparison below is exact.
        object.__setattr__(self, "target", Target(self.target))

    @property
    def holds_lease(self) -> bool:
        return self.target is Target.CHANNEL_AGENT

    @property
    def stream(self) -> str | None:
        if self.target in (Target.CHANNEL_AGENT, Target.AGENT) and self.agent_id is not None:
            return agent_stream(self.agent_id)
        if self.target is Target.TOPIC and self.topic_id is not None:
            return topic_stream(self.topic_id)
        return None

    def subscription(self, connection_id: str) -> Subscription | None:
        if not self.holds_lease or self.agent_id is None:
            return None
        return Subscription(
            connection_id, self.user_id, self.agent_id, self.session_id, self.token_digest
        )

    def as_context(self) -> dict[str, str]:
        """The authorizer's ``context`` map (API Gateway allows only scalar values)."""
        return {
            "user_id": str(self.user_id),
            "target": self.target.value,
            "agent_id": "" if self.agent_id is None else str(self.agent_id),
            "topic_id": "" if self.topic_id is None else str(self.topic_id),
            "session_id": self.session_id,
            "siblings": "1" if self.siblings else "",
            "token_digest": self.token_digest,
            "grace_scheduled": "true" if self.grace_scheduled else "",
        }

    @classmethod
    def from_context(cls, context: Any) -> Caller | None:
        if not isinstance(context, dict):
            return None
        try:
            user_id = int(context["user_id"])
            target = Target(str(context["target"]))
            agent_raw = str(context.get("agent_id") or "")
            topic_raw = str(context.get("topic_id") or "")
            return cls(
                user_id=user_id,
                target=target,
                agent_id=int(agent_raw) if agent_raw else None,
                topic_id=int(topic_raw) if topic_raw else None,
                session_id=str(context.get("session_id") or ""),
                siblings=bool(context.get("siblings")),
                token_digest=str(context.get("token_digest") or ""),
                grace_scheduled=str(context.get("grace_scheduled") or "") == "true",
            )
        except (KeyError, TypeError, ValueError):
            return None
