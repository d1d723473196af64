"""The values the presence rules reason about, free of any storage detail."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    """One live agent-stream subscription of a channel agent (a presence row)."""

    agent_id: int
    connection_id: str
    token: str
    session_id: str
    last_seen_at: float

    def is_live(self, cutoff: float) -> bool:
        return self.last_seen_at > cutoff


@dataclass(frozen=True)
class Presence:
    """An agent's routing state and every lease, read together and consistently."""

    agent_id: int
    routing_on: bool
    subscription_token: str | None
    version: int
    leases: tuple[Lease, ...]

    def live_leases(self, cutoff: float) -> list[Lease]:
        return [lease for lease in self.leases if lease.is_live(cutoff)]

    def stale_leases(self, cutoff: float) -> list[Lease]:
        return [lease for lease in self.leases if not lease.is_live(cutoff)]


@dataclass(frozen=True)
class Subscription:
    """A channel agent's socket, as the authorizer vouched for it on $connect."""

    connection_id: str
    user_id: int
    agent_id: int
    session_id: str
    token_digest: str = ""
    """The digest of the bearer token the socket was opened with ("" if unknown)."""


@dataclass(frozen=True)
class Attachment:
    """A socket joining a stream without presence (a topic, or a non-channel agent)."""

    connection_id: str
    user_id: int
    stream: str
    agent_id: int | None = None
    topic_id: int | None = None
    token_digest: str = ""
