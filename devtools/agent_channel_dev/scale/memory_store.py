"""The presence store in memory, with DynamoDB's conditions and its bill.

Every method keeps the semantics of presence/dynamodb.py (the same conditions, the
same atomicity: one method is one request) and reports the request to a Meter
with the request units DynamoDB would charge: a write 1 WRU per KB, a
transactional write 2 per item, a failed conditional write still billed; a
consistent read 1 RRU per 4 KB, an index read half that; an index entry written,
changed or removed with its item, one more write each (two when its key changes).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache

from agent_channel.grace.scheduler import GraceCancellation
from agent_channel.presence.model import Attachment, Lease, Presence, Subscription
from agent_channel.presence.store import MAX_STALE_PER_CLEAR
from agent_channel.storage import schema
from agent_channel_dev.scale import aws
from agent_channel_dev.scale.meter import Meter

USER_KB = math.ceil(aws.ITEM_BYTES["user"] / 1024)
LEASE_KB = math.ceil(aws.ITEM_BYTES["lease"] / 1024)
INDEX_PAGE_ITEMS = 1024 * 1024 // aws.ITEM_BYTES["user"]
"""Index entries in one Query page (1 MB): the agent item is projected whole."""


@dataclass
class _Agent:
    routing_on: bool = False
    token: str | None = None
    version: int = 0
    owed: tuple[str, float] | None = None
    leases: dict[str, Lease] = field(default_factory=dict)


@cache
def _partition_rru(leases: int) -> float:
    """A consistent Query of an agent's partition (its item and ``leases`` leases)."""
    size = aws.ITEM_BYTES["user"] + aws.ITEM_BYTES["lease"] * leases
    return float(math.ceil(size / 4096))


class MemoryPresenceStore:
    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.agents: dict[int, _Agent] = {}
        self.connections: dict[str, str] = {}
        """connection id -> stream"""
        self.routed: dict[int, set[int]] = {}
        """index shard -> agents whose routing is on (ROUTED#n of gsi1)"""
        self.cleared: list[int] = []
        """Agents whose routing a clear turned off, in order (for the simulation)."""

    def add_agent(self, agent_id: int) -> None:
        self.agents[agent_id] = _Agent()

    def _shard(self, agent_id: int) -> set[int]:
        number = agent_id % schema.ROUTED_SHARDS
        found = self.routed.get(number)
        if found is None:
            found = self.routed[number] = set()
        return found

    def _partition_rru(self, agent: _Agent) -> float:
        return _partition_rru(len(agent.leases))

    # -- reads ------------------------------------------------------------------------
    def read(self, agent_id: int) -> Presence | None:
        agent = self.agents.get(agent_id)
        self.meter.dynamodb("Query", rru=self._partition_rru(agent) if agent else 1.0)
        if agent is None:
            return None
        return Presence(
            agent_id=agent_id,
            routing_on=agent.routing_on,
            subscription_token=agent.token,
            version=agent.version,
            leases=tuple(agent.leases.values()),
        )

    def routed_agents(self) -> list[int]:
        shards = range(schema.ROUTED_SHARDS)
        return [agent_id for shard in shards for agent_id in self.routed_in_shard(shard)]

    def routed_in_shard(self, shard: int, after: int | None = None) -> Iterator[int]:
        # The index's order (the sort key is the id as a string), and its paging:
        # an eventually consistent Query bills half a unit per 4 KB, a page at a
        # time, and a sweep that stops early reads (and pays for) no further page.
        members = sorted(self.routed.get(shard, ()), key=schema.agent_sort)
        if after is not None:
            members = members[
                bisect_right(members, schema.agent_sort(after), key=schema.agent_sort) :
            ]
        for first in range(0, max(1, len(members)), INDEX_PAGE_ITEMS):
            page = members[first : first + INDEX_PAGE_ITEMS]
            self.meter.dynamodb("Query", rru=max(0.5, len(page) * aws.ITEM_BYTES["user"] / 8192))
            yield from page

    def owed_graces(self) -> list[tuple[GraceCancellation, float]]:
        self.meter.dynamodb("Query", rru=0.5)
        return [
            (GraceCancellation(agent_id, agent.owed[0]), agent.owed[1])
            for agent_id, agent in self.agents.items()
            if agent.owed is not None
        ]

    # -- writes -----------------------------------------------------------------------
    def turn_on(self, subscription: Subscription, token: str, now: float) -> None:
        """The state a subscribe leaves, unbilled (for setting up a fleet)."""
        self._turn_on(
            subscription.agent_id, self.agents[subscription.agent_id], subscription, token, now
        )

    def _turn_on(
        self, agent_id: int, agent: _Agent, subscription: Subscription, token: str, now: float
    ) -> None:
        agent.leases[subscription.connection_id] = Lease(
            agent_id, subscription.connection_id, token, subscription.session_id, now
        )
        agent.routing_on = True
        agent.token = token
        agent.version += 1
        agent.owed = None
        self._shard(agent_id).add(agent_id)

    def subscribe(self, subscription: Subscription, token: str, now: float) -> None:
        agent = self.agents[subscription.agent_id]
        # Connection, membership, lease, user update: four transactional items; the
        # user's index entry is rewritten (its projection changes).
        self.meter.dynamodb("TransactWriteItems", wru=2 * 3 * LEASE_KB + 2 * USER_KB + 1)
        self.connections[subscription.connection_id] = f"agent:{subscription.agent_id}"
        self._turn_on(subscription.agent_id, agent, subscription, token, now)

    def restore(self, subscription: Subscription, token: str, now: float) -> bool:
        self.meter.dynamodb("TransactWriteItems", wru=2 * 2 * LEASE_KB + 2 * USER_KB + 1)
        if subscription.connection_id not in self.connections:
            return False
        self._turn_on(
            subscription.agent_id, self.agents[subscription.agent_id], subscription, token, now
        )
        return True

    def touch(self, agent_id: int, connection_id: str, now: float) -> bool:
        self.meter.dynamodb("UpdateItem", wru=LEASE_KB)
        leases = self.agents[agent_id].leases
        lease = leases.get(connection_id)
        if lease is None:
            return False
        leases[connection_id] = Lease(
            lease.agent_id, connection_id, lease.token, lease.session_id, now
        )
        return True

    def touch_all(self, beats: Sequence[tuple[int, str]], now: float) -> None:
        """``touch`` for each (agent id, connection id), billed in one call to the
        meter: as many UpdateItems, the same units. The simulation applies a
        second's plain heartbeats so, 40,000 a second at a million agents."""
        self.meter.dynamodb("UpdateItem", wru=LEASE_KB * len(beats), requests=len(beats))
        agents = self.agents
        for agent_id, connection_id in beats:
            leases = agents[agent_id].leases
            lease = leases.get(connection_id)
            if lease is not None:
                leases[connection_id] = Lease(
                    lease.agent_id, connection_id, lease.token, lease.session_id, now
                )

    def attach(self, attachment: Attachment, now: float) -> None:
        self.meter.dynamodb("TransactWriteItems", wru=2 * 3 * LEASE_KB)
        self.connections[attachment.connection_id] = attachment.stream

    def drop_connection(self, connection_id: str, stream: str) -> None:
        self.meter.dynamodb("TransactWriteItems", wru=2 * 2 * LEASE_KB)
        self.connections.pop(connection_id, None)

    def drop_lease(self, agent_id: int, connection_id: str) -> Lease | None:
        self.meter.dynamodb("DeleteItem", wru=LEASE_KB)
        agent = self.agents.get(agent_id)
        return agent.leases.pop(connection_id, None) if agent else None

    def reap(self, stale: Sequence[Lease], cutoff: float) -> list[Lease]:
        reaped: list[Lease] = []
        for lease in stale:
            self.meter.dynamodb("DeleteItem", wru=LEASE_KB)
            leases = self.agents[lease.agent_id].leases
            current = leases.get(lease.connection_id)
            if current is not None and current.last_seen_at < cutoff:
                del leases[lease.connection_id]
                reaped.append(lease)
        return reaped

    def clear_routing(self, seen: Presence, stale: Sequence[Lease], cutoff: float) -> bool:
        if len(stale) > MAX_STALE_PER_CLEAR:
            raise ValueError("too many stale leases for one transaction; reap first")
        agent = self.agents[seen.agent_id]
        self.meter.dynamodb("TransactWriteItems", wru=2 * (USER_KB + LEASE_KB * len(stale)) + 1)
        if agent.version != seen.version:
            return False
        for lease in stale:
            current = agent.leases.get(lease.connection_id)
            if current is not None and not current.last_seen_at < cutoff:
                return False
        for lease in stale:
            agent.leases.pop(lease.connection_id, None)
        agent.routing_on = False
        agent.token = None
        self._shard(seen.agent_id).discard(seen.agent_id)
        self.cleared.append(seen.agent_id)
        return True

    def close_agent(self, seen: Presence, owner_id: int, now: float) -> bool:
        # As the DynamoDB store: one transaction, conditioned on the version read.
        agent = self.agents[seen.agent_id]
        self.meter.dynamodb("TransactWriteItems", wru=2 * (USER_KB + LEASE_KB * len(seen.leases)))
        if agent.version != seen.version:
            return False
        for lease in seen.leases:
            agent.leases.pop(lease.connection_id, None)
        agent.routing_on = False
        agent.token = None
        agent.owed = None
        agent.version += 1
        self._shard(seen.agent_id).discard(seen.agent_id)
        return True

    def owe_grace(self, cancellation: GraceCancellation, due_at: float) -> bool:
        self.meter.dynamodb("UpdateItem", wru=USER_KB + 1)
        agent = self.agents[cancellation.agent_id]
        if agent.routing_on:
            return False
        agent.owed = (cancellation.subscription_token, due_at)
        return True

    def settle_owed_grace(self, cancellation: GraceCancellation) -> None:
        self.meter.dynamodb("UpdateItem", wru=USER_KB + 1)
        agent = self.agents[cancellation.agent_id]
        if agent.owed is not None and agent.owed[0] == cancellation.subscription_token:
            agent.owed = None
