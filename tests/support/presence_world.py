"""A fresh moto account with one owner and one channel agent, and the operations
the presence scenarios are made of, each a handler invocation as API Gateway
would make it."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

import boto3
from moto import mock_aws

from agent_channel.config import CHANNEL_AGENT_MODEL, settings
from agent_channel.grace.scheduler import schedule_name
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.presence.model import Presence
from agent_channel.storage import schema
from agent_channel.storage.records import ConnectionRecord, LeaseRecord, UserRecord
from agent_channel_dev.local.apigw_events import scheduled_event
from tests.support import moto_state
from tests.support.clock import FakeClock
from tests.support.fixtures import create_table
from tests.support.gateway import Gateway, invoke

T = TypeVar("T")


class PresenceWorld:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.gateway = Gateway()
        owner = accounts.create_user("owner")
        self.owner_id = owner.user_id
        self.token = accounts.issue_token(owner.user_id)
        self.agent_id = accounts.create_agent("agent", owner.user_id, CHANNEL_AGENT_MODEL).user_id
        self.connections: dict[str, str] = {}

    # -- set-up, run before the actors start -------------------------------------
    def open(self, name: str, session_id: str | None = None) -> str:
        query = {"agent_id": str(self.agent_id), "session_id": session_id or name}
        connected = self.gateway.connect(query, token=self.token, connection_id=f"{name}=")
        assert connected.status == 200
        self.connections[name] = connected.connection_id
        return connected.connection_id

    def make_stale(self, name: str) -> None:
        """The plugin behind this socket stopped heartbeating long ago."""
        lease = LeaseRecord(*schema.lease_key(self.agent_id, self.connections[name]))
        lease.update(actions=[LeaseRecord.last_seen_at.set(self.clock() - 10_000)])

    def reap_by_sweep(self) -> None:
        invoke("sweeper", scheduled_event())

    # -- actors --------------------------------------------------------------------
    def subscribe(self, name: str, session_id: str | None = None) -> Callable[[], Any]:
        def act() -> Any:
            query = {"agent_id": str(self.agent_id), "session_id": session_id or name}
            result = self.gateway.connect(query, token=self.token, connection_id=f"{name}=")
            self.connections[name] = result.connection_id
            return result.status

        return act

    def subscribe_then_heartbeat(self, name: str, session_id: str) -> Callable[[], Any]:
        subscribe = self.subscribe(name, session_id)

        def act() -> Any:
            status = subscribe()
            if status == 200:
                self.gateway.beat(f"{name}=")
            return status

        return act

    def subscribe_then_leave(self, name: str, session_id: str | None = None) -> Callable[[], Any]:
        subscribe = self.subscribe(name, session_id)

        def act() -> Any:
            status = subscribe()
            if status == 200:
                return self.gateway.disconnect(f"{name}=").get("body")
            return status

        return act

    def disconnect(self, name: str) -> Callable[[], Any]:
        return lambda: self.gateway.disconnect(f"{name}=").get("body")

    def heartbeat(self, name: str) -> Callable[[], Any]:
        def act() -> Any:
            if f"{name}=" not in self.gateway.contexts:
                return None  # a frame cannot arrive on a socket that is not open
            return self.gateway.beat(f"{name}=")

        return act

    def touch(self, name: str) -> Callable[[], Any]:
        """An on-time heartbeat: API Gateway's own UpdateItem of the lease (the
        service integration), which renews a lease it finds, stale or not, without
        bumping the presence version."""

        def act() -> Any:
            if f"{name}=" not in self.gateway.contexts:
                return None
            return self.gateway.send(f"{name}=", {"action": "heartbeat"})

        return act

    def sweep(self) -> Callable[[], Any]:
        return lambda: invoke("sweeper", scheduled_event())

    # -- observation ---------------------------------------------------------------
    def presence(self) -> Presence:
        presence = wiring.presence_store().read(self.agent_id)
        assert presence is not None
        return presence

    def live_connection_ids(self) -> set[str]:
        return {
            connection_id
            for connection_id in self.connections.values()
            if _exists(ConnectionRecord, *schema.connection_key(connection_id))
        }

    def agent_record(self) -> UserRecord:
        return UserRecord.get(*schema.user_key(self.agent_id), consistent_read=True)

    def agent_wide_grace(self) -> dict[str, Any] | None:
        """The pending agent-wide grace schedule's payload, if there is one."""
        try:
            schedule = _scheduler().get_schedule(
                Name=schedule_name(self.agent_id, None), GroupName=settings().schedule_group
            )
        except _scheduler().exceptions.ResourceNotFoundException:
            return None
        payload: dict[str, Any] = json.loads(schedule["Target"]["Input"])
        return payload

    def check_index(self) -> None:
        """The sweeper's index sees what the item says: a routed agent is in its
        ROUTED shard (else no sweep would ever find it again), an owed grace only
        while routing is off and under GRACE_OWED."""
        agent = self.agent_record()
        if agent.routing_expression == "true":
            assert agent.gsi1pk == schema.routed_shard(self.agent_id), f"routed, unindexed: {agent}"
            assert agent.grace_owed_token is None, "a grace owed while routed"
        if agent.grace_owed_token is not None:
            assert agent.gsi1pk == schema.GRACE_OWED, f"owed, unindexed: {agent.attribute_values}"

    def check_departure_covered(self) -> None:
        """Routing off after a departure: its agent-wide grace is pending or owed, so
        the delegated work is taken back in the end."""
        agent = self.agent_record()
        if agent.routing_expression != "true":
            assert self.agent_wide_grace() is not None or agent.grace_owed_token is not None, (
                "routing off, and no grace pending or owed: work stranded for good"
            )

    def schedules(self) -> list[dict[str, Any]]:
        return _scheduler().list_schedules(GroupName=settings().schedule_group)["Schedules"]

    def check_invariants(self) -> None:
        """Invariant 1 of the design, plus: no lease outlives its connection."""
        presence = self.presence()
        cutoff = self.clock() - settings().stale_after_seconds
        live = presence.live_leases(cutoff)
        assert not live or presence.routing_on, f"live session left unroutable: {presence}"
        assert not presence.routing_on or presence.leases, f"routing on with no lease: {presence}"
        open_connections = self.live_connection_ids()
        for lease in presence.leases:
            assert lease.connection_id in open_connections, f"lease resurrected: {lease}"


@cache
def _scheduler() -> Any:
    return boto3.client("scheduler")


def _exists(model: type[ConnectionRecord], pk: str, sk: str) -> bool:
    try:
        model.get(pk, sk, consistent_read=True)
    except model.DoesNotExist:
        return False
    return True


@contextmanager
def fresh_world(clock: FakeClock) -> Iterator[PresenceWorld]:
    with mock_aws():
        create_table()
        _scheduler().create_schedule_group(Name=settings().schedule_group)
        yield PresenceWorld(clock)


@dataclass(frozen=True)
class _Prepared(Generic[T]):
    aws: moto_state.Saved
    world: dict[str, Any]
    clock: float
    prepared: T


class PreparedWorlds(Generic[T]):
    """Fresh worlds that each begin as ``prepare`` left the first one.

    An exploration runs one scenario from the same start every time; building that
    start (the account, the sessions it opens, the work it delegates) through the
    handlers costs about as much as a run. ``prepare`` runs once, in the first
    world; every later world is a fresh ``mock_aws`` holding a copy of moto's state
    as ``prepare`` left it, the same ``PresenceWorld`` with its own state (its
    gateway's sockets, its connections) put back, and the clock where ``prepare``
    left it. What ``prepare`` returns (the actors, the check) is reused: it must
    keep no state of its own outside the world, moto and the clock (an event tap
    is read through ``EventTap.afresh``: its pipe keeps its place in the stream).
    """

    def __init__(self, clock: FakeClock, prepare: Callable[[PresenceWorld], T]) -> None:
        self.clock = clock
        self.prepare = prepare
        self._world: PresenceWorld | None = None
        self._saved: _Prepared[T] | None = None

    def _copy_of(self, state: dict[str, Any]) -> dict[str, Any]:
        # The clock is shared (the handlers read it), never copied.
        return copy.deepcopy(state, {id(self.clock): self.clock})

    @contextmanager
    def world(self) -> Iterator[tuple[PresenceWorld, T]]:
        if self._world is None or self._saved is None:
            with fresh_world(self.clock) as world:
                prepared = self.prepare(world)
                self._saved = _Prepared(
                    moto_state.save(), self._copy_of(vars(world)), self.clock.value, prepared
                )
                self._world = world
                yield world, prepared
            return
        saved = self._saved
        with mock_aws():
            moto_state.restore(saved.aws)
            state = vars(self._world)
            state.clear()
            state.update(self._copy_of(saved.world))
            self.clock.value = saved.clock
            yield self._world, saved.prepared
