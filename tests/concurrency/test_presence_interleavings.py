"""Invariants 1 and 2 under concurrency: every interleaving of small scenarios,
random interleavings of larger ones, and proof that the harness can fail."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest

from agent_channel.presence.dynamodb import DynamoPresenceStore
from agent_channel.presence.model import Lease, Presence
from agent_channel.storage import schema
from agent_channel_dev.instruments.request_counter import counting_requests
from tests.support.clock import FakeClock
from tests.support.gateway import function
from tests.support.interleave import (
    Chooser,
    InterleavingError,
    Run,
    explore,
    random_chooser,
    run_once,
)
from tests.support.presence_world import PresenceWorld, fresh_world

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


def two_disconnects(world: PresenceWorld) -> tuple[list, Callable]:
    world.open("a")
    world.open("b")
    actors = [("dis_a", world.disconnect("a")), ("dis_b", world.disconnect("b"))]

    def check(world: PresenceWorld, run: Run) -> None:
        presence = world.presence()
        assert not presence.routing_on and not presence.leases
        agent_wide = [
            params
            for params in run.calls("scheduler", SCHEDULE_WRITES)
            if params["Name"] == f"grace-{world.agent_id}"
        ]
        assert agent_wide, f"the last one out scheduled no grace: {run.trace}"

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
]


def run_scenario(scenario: Callable, clock: FakeClock, choose: Chooser) -> Run:
    with fresh_world(clock) as world:
        actors, check = scenario(world)
        run = run_once(actors, choose)
        try:
            world.check_invariants()
            check(world, run)
        except AssertionError as error:
            raise InterleavingError(f"{error}\ntrace: {run.trace}") from error
        return run


@pytest.mark.parametrize("scenario", SMALL_SCENARIOS, ids=lambda s: s.__name__)
def test_every_interleaving_keeps_the_invariants(scenario: Callable, fake_clock: FakeClock) -> None:
    runs = explore(lambda choose: run_scenario(scenario, fake_clock, choose))
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
    if os.environ.get("AGENT_CHANNEL_EXHAUSTIVE") == "1":
        runs = explore(lambda choose: run_scenario(scenario, fake_clock, choose))
        print(f"{scenario.__name__}: {runs} interleavings")
        return
    traces = set()
    for seed in range(SAMPLED_RUNS):
        traces.add(tuple(run_scenario(scenario, fake_clock, random_chooser(seed)).trace))
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
    with pytest.raises(
        InterleavingError, match=r"unroutable|lost to a concurrent clear|routing_on"
    ):
        explore(lambda choose: run_scenario(scenario, fake_clock, choose))


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


@pytest.mark.parametrize("scenario", [larger_scenario, last_out_everyone], ids=lambda s: s.__name__)
def test_random_interleavings_of_larger_scenarios(
    scenario: Callable, fake_clock: FakeClock
) -> None:
    traces = set()
    for seed in range(RANDOM_RUNS):
        run = run_scenario(scenario, fake_clock, random_chooser(seed))
        traces.add(tuple(run.trace))
    assert len(traces) > RANDOM_RUNS // 2, "the random schedules should differ"
