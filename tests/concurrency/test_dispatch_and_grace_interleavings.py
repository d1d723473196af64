"""Dispatch versus presence, and a session-scoped grace versus a revival, under every
interleaving of their DynamoDB, Scheduler and @connections requests."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import boto3
import pytest

from agent_channel.config import settings
from agent_channel.delivery import dispatch as delivery
from agent_channel.errors import Refusal
from agent_channel.grace.dynamodb import DynamoTaskBook
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.storage import schema
from agent_channel.tasks.dynamodb import DynamoTaskStore
from agent_channel.tasks.model import DeliveryPlan, Status, Task
from tests.support.clock import FakeClock
from tests.support.gateway import invoke
from tests.support.interleave import (
    Chooser,
    InterleavingError,
    Run,
    explaining,
    explore,
    random_chooser,
    run_once,
)
from tests.support.presence_world import PreparedWorlds, PresenceWorld

tasks = DynamoTaskStore()
TABLE_AND_SOCKETS = frozenset({"dynamodb", "apigatewaymanagementapi"})


@pytest.fixture(autouse=True)
def posts_on_the_callers_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Fan-out posts on worker threads when a stream has several sockets, and the
    # harness pauses only the actors' own threads: one worker keeps every post on
    # the actor's thread, an interleaving point.
    from agent_channel import config

    monkeypatch.setenv("FANOUT_WORKERS", "1")
    config.settings.cache_clear()
    yield
    config.settings.cache_clear()


@pytest.fixture(autouse=True)
def one_sweep_shard(monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock) -> None:
    monkeypatch.setattr(schema, "ROUTED_SHARDS", 1)


def position(run: Run, actor: str, operation: str, *, last: bool = False) -> int | None:
    """Where in the trace ``actor`` sent ``operation`` (first, or last), if it did."""
    found = [i for i, (who, op) in enumerate(run.trace) if who == actor and op == operation]
    if not found:
        return None
    return found[-1] if last else found[0]


def status(task_id: int) -> str:
    task = tasks.get(task_id)
    assert task is not None
    return str(task.status)


# -- 1. dispatch versus the only session leaving and coming back ------------------------


def dispatch_actor(task_id: int) -> Callable[[], Any]:
    def act() -> Any:
        try:
            # boto3's @connections client, not the lean poster: its posts go through
            # botocore, where the harness makes them interleaving points.
            client = boto3.client("apigatewaymanagementapi", endpoint_url=settings().callback_url)
            delivery.dispatch(tasks, task_id, client=client, on_gone=wiring.gone_handler())
        except Refusal as refusal:
            return refusal.code
        return "delegated"

    return act


Actors = list[tuple[str, Callable[[], Any]]]


def leave_and_return_beside_a_dispatch(world: PresenceWorld) -> tuple[Actors, Task]:
    """The agent's only session open, a task started: the dispatch, the session
    leaving and the same session coming back."""
    world.open("a", "s1")
    topic = accounts.create_topic(
        int(world.agent_record().created_by), "t", primary_agent_id=world.agent_id
    )
    task = tasks.start(
        tasks.create(topic_id=int(topic.topic_id), agent_id=world.agent_id, content="x")
    )
    actors = [
        ("dispatch", dispatch_actor(task.task_id)),
        ("leave", world.disconnect("a")),
        ("back", world.subscribe("b", "s1")),
    ]
    return actors, task


def dispatch_races_leave_and_return(
    worlds: PreparedWorlds[tuple[Actors, Task]], choose: Chooser
) -> Run:
    with worlds.world() as (world, (actors, task)):
        # Scheduler requests (the grace scheduled and withdrawn) change nothing the
        # check looks at; with them as points too the exploration runs past the
        # time budget.
        run = run_once(actors, choose, TABLE_AND_SOCKETS)
        with explaining(run):
            world.check_invariants()
            check_delegated_to_a_socket_that_held_a_lease(world, run, task)
        return run


def check_delegated_to_a_socket_that_held_a_lease(
    world: PresenceWorld, run: Run, task: Task
) -> None:
    """A task ends delegated only if a socket its message went to still held its lease
    when the delegation committed (open now, or removed only after the commit)."""
    final = status(task.task_id)
    if final != "delegated":
        assert run.results["dispatch"] in ("agent_not_routable", "presence_changed"), run.results
        return
    committed = position(run, "dispatch", "TransactWriteItems", last=True)
    assert committed is not None
    posted = [
        params["ConnectionId"]
        for params in run.calls("apigatewaymanagementapi", ("PostToConnection",), "dispatch")
    ]
    assert posted, "delegated, and its message went nowhere"
    open_now = world.live_connection_ids()
    lease_dropped = position(run, "leave", "DeleteItem")
    held_at_commit = [
        connection
        for connection in posted
        if connection in open_now
        or (connection == "a=" and (lease_dropped is None or lease_dropped > committed))
    ]
    assert held_at_commit, f"delegated to {posted}, none of which held a lease at the commit"


SAMPLED_RUNS = 150
"""Random interleavings of dispatch versus leave-and-return in the default suite."""


@pytest.mark.timeout(3600)
def test_every_interleaving_of_dispatch_and_presence_delegates_to_a_live_socket(
    fake_clock: FakeClock,
) -> None:
    """Exhaustive with AGENT_CHANNEL_EXHAUSTIVE=1 (``make interleavings``): 1,230
    interleavings before a returning subscribe reaped stale siblings, several
    thousand since (its lease read and reap are points too), past the default
    suite's budget on two cores. The default suite samples SAMPLED_RUNS of them."""
    start = fake_clock.value
    outcomes: set[str] = set()
    worlds = PreparedWorlds(fake_clock, leave_and_return_beside_a_dispatch)

    def one(choose: Chooser) -> Run:
        fake_clock.value = start
        run = dispatch_races_leave_and_return(worlds, choose)
        outcomes.add(str(run.results["dispatch"]))
        return run

    if os.environ.get("AGENT_CHANNEL_EXHAUSTIVE") == "1":
        runs = explore(one)
        print(f"dispatch_races_leave_and_return: {runs} interleavings, outcomes {sorted(outcomes)}")
    else:
        traces = {tuple(one(random_chooser(seed)).trace) for seed in range(SAMPLED_RUNS)}
        assert len(traces) > SAMPLED_RUNS // 2, "the random schedules should differ"
    assert {"delegated", "agent_not_routable"} <= outcomes, outcomes


# -- 4. a session-scoped grace versus the session's heartbeat ---------------------------


def stale_session_with_delegated_work(beat: str) -> Callable[[PresenceWorld], tuple[Actors, int]]:
    """Every lease stale, routing still on (no sweep yet), a task of the session
    delegated: the session's grace, and a heartbeat of its plugin, alive after all,
    on the unreaped lease: an on-time heartbeat (``touch``, API Gateway's
    UpdateItem, no version bump: the race the cancel's lease guards close) or a late
    one (``restore``, through Lambda)."""

    def prepare(world: PresenceWorld) -> tuple[Actors, int]:
        world.open("a", "s1")
        owner_id = int(world.agent_record().created_by)
        topic = accounts.create_topic(
            owner_id, "s1", primary_agent_id=world.agent_id, session_id="s1"
        )
        task = tasks.create(topic_id=int(topic.topic_id), agent_id=world.agent_id, content="x")
        task_id = tasks.delegate(tasks.start(task)).task_id
        lease = world.presence().leases[0]
        world.make_stale("a")
        payload = {
            "agent_id": world.agent_id,
            "subscription_token": lease.token,
            "session_id": "s1",
        }
        actors = [
            ("grace", lambda: invoke("cancel_offline", payload)),
            ("beat", world.touch("a") if beat == "touch" else world.heartbeat("a")),
        ]
        return actors, task_id

    return prepare


def session_grace_races_heartbeat(
    worlds: PreparedWorlds[tuple[Actors, int]], choose: Chooser
) -> Run:
    """The session's grace fires while its plugin heartbeats on the unreaped lease
    (``stale_session_with_delegated_work``): the heartbeat, if it came first, wins."""
    with worlds.world() as (world, (actors, task_id)):
        run = run_once(actors, choose)
        with explaining(run):
            world.check_invariants()
            revived = position(run, "beat", "UpdateItem")
            final = status(task_id)
            if final == "cancelled":
                cancelled = position(run, "grace", "TransactWriteItems", last=True)
                assert revived is None or (cancelled is not None and cancelled < revived), (
                    "cancelled although the session's heartbeat had revived it first"
                )
            else:
                assert final == "delegated"
                assert run.results["grace"]["outcome"] == "session_back", run.results
        return run


@pytest.mark.parametrize("beat", ["touch", "restore"])
def test_every_interleaving_of_a_session_grace_and_a_revival_lets_the_revival_win(
    fake_clock: FakeClock, beat: str
) -> None:
    start = fake_clock.value
    outcomes: set[str] = set()
    worlds = PreparedWorlds(fake_clock, stale_session_with_delegated_work(beat))

    def one(choose: Chooser) -> None:
        fake_clock.value = start + settings().stale_after_seconds + 1
        run = session_grace_races_heartbeat(worlds, choose)
        outcomes.add(str(run.results["grace"]["outcome"]))

    runs = explore(one)
    print(
        f"session_grace_races_heartbeat ({beat}): {runs} interleavings, outcomes {sorted(outcomes)}"
    )
    assert {"cancelled", "session_back"} <= outcomes, outcomes


# -- the harness kills the guards' mutants ----------------------------------------------


class UnguardedDelegate(DynamoTaskStore):
    """delegate without the presence guard: the code before the fix."""

    def delegate(
        self,
        task: Task,
        pending_tool_call: str | None = None,
        *,
        delivery: DeliveryPlan | None = None,
        presence_version: int | None = None,
        connections: Sequence[str] = (),
    ) -> Task:
        return super().delegate(task, pending_tool_call, delivery=delivery)


class DelegateWithoutConnectionGuards(DynamoTaskStore):
    """delegate guarded by presence only, not by the sockets being open."""

    def delegate(
        self,
        task: Task,
        pending_tool_call: str | None = None,
        *,
        delivery: DeliveryPlan | None = None,
        presence_version: int | None = None,
        connections: Sequence[str] = (),
    ) -> Task:
        return super().delegate(
            task, pending_tool_call, delivery=delivery, presence_version=presence_version
        )


class CancelWithoutLeaseGuards(DynamoTaskStore):
    """A grace's cancel without the stale-lease guards: the code before the fix."""

    def cancel(
        self,
        task: Task,
        *,
        from_statuses: Collection[Status],
        presence_version: int | None = None,
        stale_leases: Sequence[str] = (),
        stale_before: float = 0.0,
        reason: str | None = None,
    ) -> Task:
        return super().cancel(
            task, from_statuses=from_statuses, presence_version=presence_version, reason=reason
        )


@pytest.mark.parametrize(
    "broken", [UnguardedDelegate, DelegateWithoutConnectionGuards], ids=lambda c: c.__name__
)
def test_the_harness_catches_an_unguarded_delegate(
    fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch, broken: type[DynamoTaskStore]
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "tasks", broken())
    start = fake_clock.value
    worlds = PreparedWorlds(fake_clock, leave_and_return_beside_a_dispatch)

    def one(choose: Chooser) -> None:
        fake_clock.value = start
        dispatch_races_leave_and_return(worlds, choose)

    with pytest.raises(InterleavingError, match="none of which held a lease"):
        explore(one)


def test_the_harness_catches_a_cancel_without_lease_guards(
    fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.cancel_offline import app

    monkeypatch.setattr(app, "book", DynamoTaskBook(CancelWithoutLeaseGuards()))
    start = fake_clock.value
    worlds = PreparedWorlds(fake_clock, stale_session_with_delegated_work("touch"))

    def one(choose: Chooser) -> None:
        fake_clock.value = start
        session_grace_races_heartbeat(worlds, choose)

    with pytest.raises(InterleavingError, match="revived it first"):
        explore(one)


def test_the_harness_catches_a_recheck_that_reaps_a_routed_agents_last_leases(
    fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recheck must not reap every lease of an agent whose routing is on (the
    sweeper's settle does that, together with the clear); without that exception
    the grace cancels the work of a session whose heartbeat came first."""
    from agent_channel.grace import cancellation

    def always_reap(store: Any, agent_id: int, cutoff: float) -> Any:
        presence = store.read(agent_id)
        if presence is None:
            return None
        stale = presence.stale_leases(cutoff)
        if stale:
            store.reap(stale, cutoff)
        return store.read(agent_id)

    monkeypatch.setattr(cancellation, "_reaped", always_reap)
    start = fake_clock.value
    worlds = PreparedWorlds(fake_clock, stale_session_with_delegated_work("touch"))

    def one(choose: Chooser) -> None:
        fake_clock.value = start
        session_grace_races_heartbeat(worlds, choose)

    with pytest.raises(InterleavingError):
        explore(one)
