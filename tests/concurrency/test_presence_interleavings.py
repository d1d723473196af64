"""Invariants 1 and 2 under concurrency: every interleaving of small scenarios,
random interleavings of larger ones, and proof that the harness can fail."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from agent_channel.grace.scheduler import GraceCancellation
from agent_channel.presence import rules as presence_rules
from agent_channel.presence import sweep_plan
from agent_channel.presence.dynamodb import DynamoPresenceStore
from agent_channel.presence.model import Lease, Presence
from agent_channel.storage import schema
from agent_channel.storage.records import UserRecord
from agent_channel_dev.instruments.request_counter import counting_requests
from tests.support.clock import FakeClock
from tests.support.faults import scheduler_down
from tests.support.gateway import function, invoke
from tests.support.interleave import (
    INTERLEAVED_SERVICES,
    TABLE_ONLY,
    Chooser,
    InterleavingError,
    Run,
    explaining,
    explore,
    random_chooser,
    run_once,
)
from tests.support.presence_world import PreparedWorlds, PresenceWorld

SCHEDULE_WRITES = ("CreateSchedule", "UpdateSchedule")

Scenario = Callable[
    [PresenceWorld],
    tuple[list[tuple[str, Callable[[], object]]], Callable[[PresenceWorld, Run], None]],
]


@pytest.fixture(autouse=True)
def one_sweep_shard(monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock) -> None:
    # The sweeper Queries every shard of its index; one shard keeps the number of
    # storage calls (and so of interleavings) small without changing any rule.
    monkeypatch.setattr(schema, "ROUTED_SHARDS", 1)


def check_no_stale_disconnect_acted(run: Run, disconnects: list[str]) -> None:
    """Invariant 2: a stale or duplicate $disconnect schedules nothing."""
    for name in disconnects:
        if run.results[name] == "stale_disconnect":
            assert not run.calls("scheduler", SCHEDULE_WRITES, actor=name), run.trace
            writes_after_lease = [op for who, op in run.trace if who == name][2:]
            assert writes_after_lease == [], f"{name} went on after a stale lease: {run.trace}"


def two_subscribes_and_a_disconnect(world: PresenceWorld) -> tuple[list, Callable]:
    world.open("a")
    actors = [
        ("sub_b", world.subscribe("b")),
        ("sub_c", world.subscribe("c")),
        ("dis_a", world.disconnect("a")),
    ]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert presence.routing_on
        assert {lease.connection_id for lease in presence.leases} == {"b=", "c="}

    return actors, check


def agent_wide_graces(world: PresenceWorld, run: Run) -> list[dict[str, Any]]:
    """The run's writes of the agent's agent-wide grace schedule."""
    return [
        params
        for params in run.calls("scheduler", SCHEDULE_WRITES)
        if params["Name"] == f"grace-{world.agent_id}"
    ]


def two_disconnects(world: PresenceWorld) -> tuple[list, Callable]:
    world.open("a")
    world.open("b")
    actors = [("dis_a", world.disconnect("a")), ("dis_b", world.disconnect("b"))]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert not presence.routing_on and not presence.leases
        assert agent_wide_graces(world, run), f"the last one out scheduled no grace: {run.trace}"

    return actors, check


def disconnect_heartbeat_and_sweep(world: PresenceWorld) -> tuple[list, Callable]:
    world.open("a")
    world.open("b")
    world.make_stale("b")  # b's plugin missed heartbeats; its socket is still open
    actors = [
        ("dis_a", world.disconnect("a")),
        ("beat_b", world.heartbeat("b")),
        ("sweep", world.sweep()),
    ]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        # b heartbeated, whatever the order: its lease is live (refreshed or
        # restored) and the agent is routable.
        assert [lease.connection_id for lease in presence.leases] == ["b="]
        assert presence.routing_on

    return actors, check


def subscribe_races_last_disconnect(world: PresenceWorld) -> tuple[list, Callable]:
    world.open("a")
    actors = [("dis_a", world.disconnect("a")), ("sub_b", world.subscribe("b"))]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert presence.routing_on, f"a subscribe lost to a concurrent clear: {run.trace}"
        assert [lease.connection_id for lease in presence.leases] == ["b="]

    return actors, check


def heartbeat_races_own_disconnect(world: PresenceWorld) -> tuple[list, Callable]:
    world.open("a")
    world.make_stale("a")
    world.reap_by_sweep()  # lease reaped, routing off; the socket is still open
    actors = [("beat_a", world.heartbeat("a")), ("dis_a", world.disconnect("a"))]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert not presence.leases, f"heartbeat resurrected a removed connection: {run.trace}"
        assert not presence.routing_on
        check_no_stale_disconnect_acted(run, ["dis_a"])

    return actors, check


def duplicate_disconnect_with_sibling(world: PresenceWorld) -> tuple[list, Callable]:
    world.open("a", session_id="sa")
    world.open("b", session_id="sb")
    actors = [("dis_a", world.disconnect("a")), ("dis_a_again", world.disconnect("a"))]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert presence.routing_on
        assert [lease.connection_id for lease in presence.leases] == ["b="]
        outcomes = sorted(run.results.values())
        assert outcomes == ["sibling_remains", "stale_disconnect"], outcomes
        check_no_stale_disconnect_acted(run, ["dis_a", "dis_a_again"])
        scheduled = run.calls("scheduler", SCHEDULE_WRITES)
        assert len(scheduled) == 1, "exactly one session-scoped grace"
        assert scheduled[0]["Name"].startswith(f"grace-{world.agent_id}-s-")

    return actors, check


def sweep_races_disconnect_of_stale_lease(world: PresenceWorld) -> tuple[list, Callable]:
    world.open("a")
    world.make_stale("a")
    actors = [("sweep", world.sweep()), ("dis_a", world.disconnect("a"))]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert not presence.routing_on and not presence.leases
        assert run.calls("scheduler", SCHEDULE_WRITES), "someone scheduled the grace"
        check_no_stale_disconnect_acted(run, ["dis_a"])

    return actors, check


def subscribe_reaps_while_the_stale_sibling_heartbeats(
    world: PresenceWorld,
) -> tuple[list, Callable]:
    """A new session reaps a sibling's stale lease on subscribe while that sibling's
    plugin, only slow, heartbeats: the heartbeat wins (refreshed, or restored after
    the reap), and the crashed-looking row never outlives its connection."""
    world.open("a", session_id="sa")
    world.make_stale("a")
    actors = [("sub_b", world.subscribe("b", "sb")), ("beat_a", world.heartbeat("a"))]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert presence.routing_on
        assert {lease.connection_id for lease in presence.leases} == {"a=", "b="}, run.trace
        cutoff = world.clock() - 45
        assert all(lease.is_live(cutoff) for lease in presence.leases), presence

    return actors, check


def _beside_a_crashed_lease(world: PresenceWorld) -> None:
    """Sessions a and b about to leave, c crashed without a $disconnect, d staying."""
    for name in ("a", "b", "c", "d"):
        world.open(name, session_id=f"s{name}")
    world.make_stale("c")


def _deletes(run: Run, actor: str) -> int:
    return sum(1 for who, op in run.trace if who == actor and op == "DeleteItem")


def sibling_disconnects_leave_the_reap_to_the_sweep(world: PresenceWorld) -> tuple[list, Callable]:
    """One reaper per stale lease: siblings leaving together never race for the
    crashed lease; the next sweep reaps it, once, and schedules its session's grace."""
    _beside_a_crashed_lease(world)
    actors = [("dis_a", world.disconnect("a")), ("dis_b", world.disconnect("b"))]

    def check(world: PresenceWorld, run: Run) -> None:
        for name in ("dis_a", "dis_b"):
            assert _deletes(run, name) == 1, f"{name} deleted more than its own lease: {run.trace}"
        assert {lease.connection_id for lease in world.presence().leases} == {"c=", "d="}
        with counting_requests() as sweep:
            world.sweep()()
        assert sweep.by_operation("dynamodb")["DeleteItem"] == 1, "the sweep reaps c, once"
        graces = sweep.by_operation("scheduler")
        assert graces["CreateSchedule"] + graces["UpdateSchedule"] == 1, "c's session grace"
        presence = world.presence()
        assert presence.routing_on
        assert [lease.connection_id for lease in presence.leases] == ["d="]

    return actors, check


def subscribe_reaps_while_the_stale_sibling_disconnects(
    world: PresenceWorld,
) -> tuple[list, Callable]:
    """The reap on subscribe and the crashed sibling's late $disconnect both go for
    the same lease: exactly one takes it, and routing stays on for the new session."""
    world.open("a", session_id="sa")
    world.make_stale("a")
    actors = [("sub_b", world.subscribe("b", "sb")), ("dis_a", world.disconnect("a"))]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert presence.routing_on
        assert [lease.connection_id for lease in presence.leases] == ["b="], run.trace
        check_no_stale_disconnect_acted(run, ["dis_a"])

    return actors, check


def sweep_races_a_sibling_disconnect(world: PresenceWorld) -> tuple[list, Callable]:
    _beside_a_crashed_lease(world)
    actors = [("dis_a", world.disconnect("a")), ("sweep", world.sweep())]

    def check(world: PresenceWorld, run: Run) -> None:
        assert _deletes(run, "dis_a") == 1, f"the disconnect reaped: {run.trace}"
        assert _deletes(run, "sweep") == 1, f"the sweep reaps c once: {run.trace}"
        presence = world.presence()
        assert presence.routing_on
        assert {lease.connection_id for lease in presence.leases} == {"b=", "d="}

    return actors, check


def continuation_races_the_next_sweep(world: PresenceWorld) -> tuple[list, Callable]:
    """A sweep that ran out of time handed its rest to a continuation, which is
    still settling the agent when the next minute's sweep reaches it too: one of
    them clears routing and schedules the grace, the other changes nothing."""
    world.open("a")
    world.make_stale("a")
    # The continuation resumes after an agent the index holds before this one.
    before = world.owner_id
    assert schema.agent_sort(before) < schema.agent_sort(world.agent_id)
    event = sweep_plan.worker_event([0], sweep_plan.Resume(0, before), hop=1)
    actors = [("continuation", lambda: invoke("sweeper", event)), ("sweep", world.sweep())]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert not presence.routing_on and not presence.leases
        agent_wide = agent_wide_graces(world, run)
        assert len(agent_wide) == 1, f"the grace scheduled {len(agent_wide)} times: {run.trace}"
        outcomes = sorted(
            outcome for answer in run.results.values() for outcome in answer["outcomes"]
        )
        assert outcomes == ["last_out"] or outcomes == ["last_out", "nothing"], outcomes

    return actors, check


SMALL_SCENARIOS = [
    two_disconnects,
    disconnect_heartbeat_and_sweep,
    subscribe_races_last_disconnect,
    heartbeat_races_own_disconnect,
    duplicate_disconnect_with_sibling,
    sweep_races_disconnect_of_stale_lease,
    subscribe_reaps_while_the_stale_sibling_heartbeats,
    subscribe_reaps_while_the_stale_sibling_disconnects,
    sibling_disconnects_leave_the_reap_to_the_sweep,
    sweep_races_a_sibling_disconnect,
    continuation_races_the_next_sweep,
]


TABLE_ONLY_WHEN_EXHAUSTIVE = {two_subscribes_and_a_disconnect, disconnect_heartbeat_and_sweep}
"""Too many interleavings (thousands) once every Scheduler request is a point too:
explored exhaustively over their DynamoDB requests, and under random interleavings
of every request (test_random_interleavings_with_every_point)."""


Worlds = PreparedWorlds[tuple[list, Callable]]


def run_scenario(
    worlds: Worlds, choose: Chooser, services: frozenset[str] = INTERLEAVED_SERVICES
) -> Run:
    """One run of the scenario ``worlds`` prepares (once: every run starts from a
    copy of the state it left)."""
    with worlds.world() as (world, (actors, check)):
        run = run_once(actors, choose, services)
        with explaining(run):
            world.check_invariants()
            check(world, run)
        return run


@pytest.mark.parametrize("scenario", SMALL_SCENARIOS, ids=lambda s: s.__name__)
def test_every_interleaving_keeps_the_invariants(scenario: Callable, fake_clock: FakeClock) -> None:
    services = TABLE_ONLY if scenario in TABLE_ONLY_WHEN_EXHAUSTIVE else INTERLEAVED_SERVICES
    worlds = PreparedWorlds(fake_clock, scenario)
    runs = explore(lambda choose: run_scenario(worlds, choose, services))
    assert runs > 1, "the scenario should have more than one interleaving"
    print(f"{scenario.__name__}: {runs} interleavings")


EXHAUSTIVE_ON_DEMAND = [two_subscribes_and_a_disconnect]
"""Small, but with 824 interleavings since each subscribe beside a routed agent reads
its partition to reap: explored exhaustively by ``make interleavings``
(AGENT_CHANNEL_EXHAUSTIVE=1), sampled at random in the default suite."""

SAMPLED_RUNS = 60


@pytest.mark.parametrize("scenario", EXHAUSTIVE_ON_DEMAND, ids=lambda s: s.__name__)
def test_larger_small_scenarios_exhaustively_on_demand(
    scenario: Callable, fake_clock: FakeClock
) -> None:
    worlds = PreparedWorlds(fake_clock, scenario)
    if os.environ.get("AGENT_CHANNEL_EXHAUSTIVE") == "1":
        runs = explore(lambda choose: run_scenario(worlds, choose))
        print(f"{scenario.__name__}: {runs} interleavings")
        return
    traces = set()
    for seed in range(SAMPLED_RUNS):
        traces.add(tuple(run_scenario(worlds, random_chooser(seed)).trace))
    assert len(traces) > SAMPLED_RUNS // 2, "the random schedules should differ"


class UnconditionedClearStore(DynamoPresenceStore):
    """A deliberately broken store: it clears routing without the version and
    staleness conditions, as a naive port of the reference's locked code would."""

    def clear_routing(self, seen: Presence, stale: Sequence[Lease], cutoff: float) -> bool:
        from agent_channel.storage import schema
        from agent_channel.storage.records import LeaseRecord, UserRecord

        for lease in stale:
            LeaseRecord(*schema.lease_key(lease.agent_id, lease.connection_id)).delete()
        UserRecord(*schema.user_key(seen.agent_id)).update(
            actions=[
                UserRecord.routing_expression.set(""),
                UserRecord.routing_subscription_token.remove(),
            ]
        )
        return True


@pytest.mark.parametrize(
    "scenario",
    [subscribe_races_last_disconnect, disconnect_heartbeat_and_sweep],
    ids=lambda s: s.__name__,
)
def test_the_harness_catches_an_unconditioned_clear(
    scenario: Callable, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = UnconditionedClearStore()
    for route in ("disconnect", "sweeper"):
        monkeypatch.setattr(function(route), "store", broken)
    worlds = PreparedWorlds(fake_clock, scenario)
    with pytest.raises(
        InterleavingError, match=r"unroutable|lost to a concurrent clear|routing_on"
    ):
        explore(lambda choose: run_scenario(worlds, choose, TABLE_ONLY))


def larger_scenario(world: PresenceWorld) -> tuple[list, Callable]:
    """Five sessions of one agent: arrivals, departures, a crash, heartbeats, a sweep."""
    world.open("a", session_id="s1")
    world.open("b", session_id="s2")
    world.open("c", session_id="s3")
    world.make_stale("c")  # crashed without a $disconnect
    actors = [
        ("sub_d_beat", world.subscribe_then_heartbeat("d", "s1")),  # s1 restarts its plugin
        ("sub_e", world.subscribe("e", "s4")),
        ("dis_a", world.disconnect("a")),
        ("dis_b", world.disconnect("b")),
        ("dis_b_again", world.disconnect("b")),
        ("beat_a", world.heartbeat("a")),
        ("sweep", world.sweep()),
    ]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert presence.routing_on, "d and e subscribed and never left"
        assert {"d=", "e="} <= {lease.connection_id for lease in presence.leases}
        check_no_stale_disconnect_acted(run, ["dis_a", "dis_b", "dis_b_again"])

    return actors, check


def last_out_everyone(world: PresenceWorld) -> tuple[list, Callable]:
    """Everyone leaves at once, while a crashed sibling's lease lingers."""
    for name in ("a", "b", "c"):
        world.open(name)
    world.make_stale("c")
    actors = [
        ("dis_a", world.disconnect("a")),
        ("dis_b", world.disconnect("b")),
        ("dis_a_again", world.disconnect("a")),
        ("sweep", world.sweep()),
        ("sweep_again", world.sweep()),
    ]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert not presence.routing_on and not presence.leases
        check_no_stale_disconnect_acted(run, ["dis_a", "dis_b", "dis_a_again"])

    return actors, check


RANDOM_RUNS = 40


@pytest.mark.parametrize(
    "scenario",
    [larger_scenario, last_out_everyone, *TABLE_ONLY_WHEN_EXHAUSTIVE],
    ids=lambda s: s.__name__,
)
def test_random_interleavings_of_larger_scenarios(
    scenario: Callable, fake_clock: FakeClock
) -> None:
    traces = set()
    worlds = PreparedWorlds(fake_clock, scenario)
    for seed in range(RANDOM_RUNS):
        run = run_scenario(worlds, random_chooser(seed))
        traces.add(tuple(run.trace))
    assert len(traces) > RANDOM_RUNS // 2, "the random schedules should differ"


# -- owed graces (Scheduler down) racing presence ----------------------------------------
#
# Scheduler calls are interleaving points too, so a subscribe can land between the
# last one out's failed CreateSchedule and its owe_grace, and a sweep paying a debt
# can interleave with a newer departure's.


def owed_grace_races_subscribe(world: PresenceWorld) -> tuple[list, Callable]:
    """Scheduler is down for the last one out; the agent subscribes again meanwhile."""
    world.open("a")
    actors = [("dis_a", world.disconnect("a")), ("sub_b", world.subscribe("b"))]

    def check(world: PresenceWorld, run: Run) -> None:
        world.check_index()
        world.check_departure_covered()
        assert world.presence().routing_on, "b subscribed and never left"

    return actors, check


def owed_grace_paid_while_a_newer_debt_is_made(world: PresenceWorld) -> tuple[list, Callable]:
    """A debt is owed; a sweep pays it while the agent comes back and leaves again
    with Scheduler down for that departure."""
    with scheduler_down():
        world.open("a")
        world.disconnect("a")()
    assert world.agent_record().grace_owed_token is not None
    # The sweep's first phase, which is what races here (its second phase, the
    # settle of routed agents, is explored by the other scenarios).
    actors = [("pay", pay_owed_graces), ("back_and_gone", world.subscribe_then_leave("b"))]

    def check(world: PresenceWorld, run: Run) -> None:
        world.check_index()
        world.check_departure_covered()

    return actors, check


def pay_owed_graces() -> None:
    """What a sweep does first: schedule each owed grace, then settle the debt."""
    sweeper = function("sweeper")
    for cancellation, due_at in sweeper.store.owed_graces():
        presence_rules._pay_owed_grace(sweeper.store, sweeper.scheduler, cancellation, due_at)


OWED_GRACE_SCENARIOS = {
    owed_grace_races_subscribe: {"dis_a"},
    owed_grace_paid_while_a_newer_debt_is_made: {"back_and_gone"},
}


def run_with_scheduler_down(worlds: Worlds, choose: Chooser) -> Run:
    with scheduler_down(OWED_GRACE_SCENARIOS[worlds.prepare]):
        return run_scenario(worlds, choose)


@pytest.mark.parametrize("scenario", list(OWED_GRACE_SCENARIOS), ids=lambda s: s.__name__)
def test_owed_graces_keep_the_index_and_every_departure_covered(
    scenario: Callable, fake_clock: FakeClock
) -> None:
    worlds = PreparedWorlds(fake_clock, scenario)
    runs = explore(lambda choose: run_with_scheduler_down(worlds, choose))
    assert runs > 1
    print(f"{scenario.__name__}: {runs} interleavings")


class OweGraceWithoutRoutingCheck(DynamoPresenceStore):
    """owe_grace without its ``routing != "true"`` condition (a mutant that survived
    the suite before these scenarios)."""

    def owe_grace(self, cancellation: GraceCancellation, due_at: float) -> bool:
        UserRecord(*schema.user_key(cancellation.agent_id)).update(
            actions=[
                UserRecord.grace_owed_token.set(cancellation.subscription_token),
                UserRecord.grace_owed_due.set(due_at),
                UserRecord.gsi1pk.set(schema.GRACE_OWED),
                UserRecord.gsi1sk.set(schema.agent_sort(cancellation.agent_id)),
            ]
        )
        return True


class SettleAnyOwedGrace(DynamoPresenceStore):
    """settle_owed_grace without its token condition (the other surviving mutant)."""

    def settle_owed_grace(self, cancellation: GraceCancellation) -> None:
        UserRecord(*schema.user_key(cancellation.agent_id)).update(
            actions=[
                UserRecord.grace_owed_token.remove(),
                UserRecord.grace_owed_due.remove(),
                UserRecord.gsi1pk.remove(),
                UserRecord.gsi1sk.remove(),
            ]
        )


@pytest.mark.parametrize(
    ("scenario", "broken"),
    [
        (owed_grace_races_subscribe, OweGraceWithoutRoutingCheck),
        (owed_grace_paid_while_a_newer_debt_is_made, SettleAnyOwedGrace),
    ],
    ids=["owe_grace_unconditioned", "settle_owed_grace_unconditioned"],
)
def test_the_harness_catches_an_unguarded_owed_grace(
    scenario: Callable,
    broken: type[DynamoPresenceStore],
    fake_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = broken()
    for route in ("disconnect", "sweeper"):
        monkeypatch.setattr(function(route), "store", store)
    worlds = PreparedWorlds(fake_clock, scenario)
    with pytest.raises(InterleavingError, match=r"unindexed|stranded|while routed"):
        explore(lambda choose: run_with_scheduler_down(worlds, choose))
