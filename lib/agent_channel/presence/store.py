"""The small storage interface the presence rules run over."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from agent_channel.grace.scheduler import GraceCancellation
    from agent_channel.presence.model import Attachment, Lease, Presence, Subscription

MAX_STALE_PER_CLEAR = 99
"""How many stale leases one clear_routing may delete along with routing (a
DynamoDB transaction holds 100 items: the agent's item and 99 leases)."""


class AccessDenied(Exception):
    """The agent or topic is not the caller's (or no longer is)."""


class PresenceStore(Protocol):
    def read(self, agent_id: int) -> Presence | None:
        """Routing and every lease of an agent, read consistently in one go."""

    def subscribe(self, subscription: Subscription, token: str, now: float) -> None:
        """Attach the socket to the agent stream, add its lease and turn routing on,
        atomically. Raises AccessDenied if the agent is not the caller's channel agent."""

    def restore(self, subscription: Subscription, token: str, now: float) -> bool:
        """As subscribe, for a socket whose lease was reaped; False (and nothing
        written) if the connection has been removed in the meantime."""

    def touch(self, agent_id: int, connection_id: str, now: float) -> bool:
        """Refresh a lease's ``last_seen_at``; False if the lease does not exist."""

    def attach(self, attachment: Attachment, now: float) -> None:
        """Join a stream without presence. Raises AccessDenied if the target is not
        readable by the caller."""

    def drop_connection(self, connection_id: str, stream: str) -> None:
        """Remove a connection and its stream membership (idempotent)."""

    def drop_lease(self, agent_id: int, connection_id: str) -> Lease | None:
        """Delete a lease if it still exists; the deleted lease, or None if it was gone."""

    def reap(self, stale: Sequence[Lease], cutoff: float) -> list[Lease]:
        """Delete each lease that is still stale at ``cutoff``; the ones deleted."""

    def clear_routing(self, seen: Presence, stale: Sequence[Lease], cutoff: float) -> bool:
        """Turn routing off and delete ``stale`` (at most MAX_STALE_PER_CLEAR), only
        if the presence version is still ``seen.version`` and each stale lease is
        still stale. False on conflict."""

    def close_agent(self, seen: Presence, owner_id: int, now: float) -> bool:
        """Unregister: mark the agent closed for work (no subscribe or restore can
        commit after this), turn routing off, forget an owed grace and delete every
        lease of ``seen``, in one transaction that holds only while the presence
        version is still ``seen.version`` and ``owner_id`` still owns the agent.
        False on conflict (read again). Idempotent."""

    def owe_grace(self, cancellation: GraceCancellation, due_at: float) -> bool:
        """Remember an agent-wide grace that could not be scheduled, unless routing
        is back on; False if nothing was recorded."""

    def owed_graces(self) -> list[tuple[GraceCancellation, float]]:
        """Grace cancellations still owed, with their due times (from an index)."""

    def settle_owed_grace(self, cancellation: GraceCancellation) -> None:
        """Forget an owed grace once scheduled (only if it is still the same one)."""

    def routed_agents(self) -> list[int]:
        """Agents whose routing is on, from an index (may lag; decide on a read),
        of every shard."""

    def routed_in_shard(self, shard: int, after: int | None = None) -> Iterable[int]:
        """The routed agents of one index shard, in the index's order (by
        ``schema.agent_sort``), only those after ``after`` if given; read lazily,
        page by page, so a sweep that stops early reads no further."""
