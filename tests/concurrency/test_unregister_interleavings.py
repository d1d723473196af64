"""unregister_agent racing a session that connects (or heartbeats) at the same moment:
every interleaving of the small cases, random ones of a larger case. Whatever the
order, the agent ends closed: no lease, routing off, no socket left open on its
stream, and a connect either refused or closed by the unregister."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import boto3
import pytest

from agent_channel.backend import delivery_commands, router
from agent_channel.config import settings
from agent_channel.delivery.members import stream_connections
from agent_channel.delivery.streams import agent_stream
from agent_channel.identity import accounts
from agent_channel.storage import schema
from agent_channel.storage.records import ConnectionRecord
from agent_channel.tasks.dynamodb import DynamoTaskStore
from tests.support.clock import FakeClock
from tests.support.event_tap import install_event_tap
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


@pytest.fixture(autouse=True)
def one_sweep_shard(monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock) -> None:
    monkeypatch.setattr(schema, "ROUTED_SHARDS", 1)


CLOSED: list[str] = []
"""Connection ids the unregister closed (DELETE @connections), in this run."""


def _record_close(params: dict[str, Any], **_: Any) -> None:
    CLOSED.append(params["ConnectionId"])


@cache
def _management() -> Any:
    # moto's @connections (it answers any connection id). Its requests are steps of
    # the interleaving; the closes are recorded here, with the connection they name.
    client = boto3.client("apigatewaymanagementapi", endpoint_url=settings().callback_url)
    client.meta.events.register(
        "provide-client-params.apigatewaymanagementapi.DeleteConnection", _record_close
    )
    return client


def unregister(world: PresenceWorld) -> Callable[[], Any]:
    # The closer is boto3's client (DELETE); the poster is not used by unregister.
    context = router.CommandContext(closer_factory=_management)
    command = {"op": "unregister_agent", "agent_id": world.agent_id}
    return lambda: delivery_commands.REGISTRY.execute(command, context)


def exists(connection_id: str) -> bool:
    try:
        ConnectionRecord.get(*schema.connection_key(connection_id), consistent_read=True)
    except ConnectionRecord.DoesNotExist:
        return False
    return True


def check_closed(world: PresenceWorld, run: Run) -> None:
    answer = run.results["unregister"]
    assert answer["ok"] is True, answer
    agent = accounts.get_user(world.agent_id)
    assert agent is not None and agent.unregistered
    presence = world.presence()
    assert not presence.routing_on, f"routing on after unregister: {presence}"
    assert presence.leases == (), f"a lease outlived the unregister: {presence}"
    assert stream_connections(agent_stream(world.agent_id)) == [], "a socket left on the stream"
    closed = set(CLOSED)
    for name, connection_id in world.connections.items():
        status = run.results.get(f"sub_{name}")
        if status == 200:
            # It connected before the close: the unregister closed its socket.
            assert connection_id in closed, f"{connection_id} connected and stayed open"
        assert not exists(connection_id), f"{connection_id}'s item outlived the unregister"


def unregister_races_first_connect(world: PresenceWorld) -> tuple[list, Callable]:
    actors = [("unregister", unregister(world)), ("sub_b", world.subscribe("b", "sb"))]
    return actors, check_closed


def unregister_races_a_heartbeat(world: PresenceWorld) -> tuple[list, Callable]:
    """The heartbeat may find its lease gone and try a restore: refused."""
    world.open("a", "sa")
    actors = [("unregister", unregister(world)), ("beat_a", world.heartbeat("a"))]
    return actors, check_closed


def unregister_races_a_second_connect(world: PresenceWorld) -> tuple[list, Callable]:
    world.open("a", "sa")
    actors = [("unregister", unregister(world)), ("sub_b", world.subscribe("b", "sb"))]
    return actors, check_closed


def run_scenario(worlds: PreparedWorlds[tuple[list, Callable]], choose: Chooser) -> Run:
    """One run of the scenario ``worlds`` prepares (once: every run starts from a
    copy of the state it left)."""
    CLOSED.clear()
    with worlds.world() as (world, (actors, check)):
        run = run_once(actors, choose)
        with explaining(run):
            world.check_invariants()
            check(world, run)
        return run


@pytest.mark.parametrize(
    "scenario",
    [unregister_races_first_connect, unregister_races_a_heartbeat],
    ids=lambda s: s.__name__,
)
def test_every_interleaving_leaves_the_agent_closed(
    scenario: Callable, fake_clock: FakeClock
) -> None:
    outcomes: set[Any] = set()
    worlds = PreparedWorlds(fake_clock, scenario)

    def one(choose: Chooser) -> None:
        run = run_scenario(worlds, choose)
        outcomes.add(
            tuple(sorted((k, str(v)[:40]) for k, v in run.results.items() if k != "unregister"))
        )

    runs = explore(one)
    assert runs > 1
    print(f"{scenario.__name__}: {runs} interleavings")
    if scenario is unregister_races_first_connect:
        statuses = {dict(outcome)["sub_b"] for outcome in outcomes}
        assert statuses == {"200", "403"}, "both orders were explored"


def unregister_with_work_and_company(world: PresenceWorld) -> tuple[list, Callable]:
    """Two sessions, delegated and queued work; a third session connects, one
    heartbeats and one leaves while the unregister runs."""
    world.open("a", "sa")
    world.open("c", "sc")
    owner = accounts.create_user("reader")
    topic = accounts.create_topic(int(owner.user_id), "t", primary_agent_id=world.agent_id)
    delegated = tasks.delegate(
        tasks.start(
            tasks.create(topic_id=int(topic.topic_id), agent_id=world.agent_id, content="x")
        )
    )
    queued = tasks.create(topic_id=int(topic.topic_id), agent_id=world.agent_id, content="y")
    tap = install_event_tap(settings().event_bus_name)
    actors = [
        ("unregister", unregister(world)),
        ("sub_b", world.subscribe("b", "sb")),
        ("beat_a", world.heartbeat("a")),
        ("dis_c", world.disconnect("c")),
    ]

    def check(world: PresenceWorld, run: Run) -> None:
        check_closed(world, run)
        for task_id in (delegated.task_id, queued.task_id):
            found = tasks.get(task_id)
            assert found is not None and found.status == "cancelled", found
        assert tasks.held_slots(world.agent_id) == []
        # A pipe that has read nothing yet: every run starts from the same table.
        published = sorted(int(event["detail"]["task_id"]) for event in tap.afresh().drain())
        assert published == sorted([delegated.task_id, queued.task_id]), "one event per task"

    return actors, check


RANDOM_RUNS = 30


def test_random_interleavings_with_work_and_company(fake_clock: FakeClock) -> None:
    traces = set()
    worlds = PreparedWorlds(fake_clock, unregister_with_work_and_company)
    for seed in range(RANDOM_RUNS):
        run = run_scenario(worlds, random_chooser(seed))
        traces.add(tuple(run.trace))
    assert len(traces) > RANDOM_RUNS // 2


def test_the_harness_catches_a_close_not_conditioned_on_presence(
    fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the presence-version condition, a subscribe landing between the
    unregister's read and its close keeps a lease the close never saw."""
    from agent_channel.storage.records import UserRecord

    monkeypatch.setattr(schema, "presence_version_is", lambda version: UserRecord.pk.exists())
    worlds = PreparedWorlds(fake_clock, unregister_races_a_second_connect)
    with pytest.raises(InterleavingError, match=r"outlived|stayed open|routing on|unroutable"):
        explore(lambda choose: run_scenario(worlds, choose))
