"""The values the presence rules reason about, free of any storage detail.

These, like the project's other immutable value types, are NamedTuples rather
than frozen dataclasses: on Python 3.12 (Lambda's runtime) defining a frozen
dataclass costs about 0.5 ms of CPU, its generated methods compiled one by one,
a NamedTuple about 0.08 ms, and a function defines its value types at every cold
start (``bench/cold_start.py`` measures it). Being tuples, they equal any tuple
with the same items and ``json.dumps`` writes them as lists: compare a value only
with values of its own type, and shape a payload from its fields.
"""

from __future__ import annotations

from typing import NamedTuple


class Lease(NamedTuple):
    """One live agent-stream subscription of a channel agent (a presence row)."""

    agent_id: int
    connection_id: str
    token: str
    session_id: str
    last_seen_at: float

    def is_live(self, cutoff: float) -> bool:
        return self.last_seen_at > cutoff


class Presence(NamedTuple):
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


class Subscription(NamedTuple):
    """A channel agent's socket, as the authorizer vouched for it on $connect."""

    connection_id: str
    user_id: int
    agent_id: int
    session_id: str
    token_digest: str = ""
    """The digest of the bearer token the socket was opened with ("" if unknown)."""


class Attachment(NamedTuple):
    """A socket joining a stream without presence (a topic, or a non-channel agent)."""

    connection_id: str
    user_id: int
    stream: str
    agent_id: int | None = None
    topic_id: int | None = None
    token_digest: str = ""
