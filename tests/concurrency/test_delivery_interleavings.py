"""At-least-once delivery under concurrency, every interleaving of small cases:
sequence allocation, resume racing a publish, acknowledgement racing redelivery,
and a reply claim racing the grace cancellation and a redelivery."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from agent_channel.config import settings
from agent_channel.delivery import history, redelivery
from agent_channel.delivery.dispatch import ReplyRefused, claim_reply, dispatch
from agent_channel.lambda_kit import wiring
from agent_channel.storage import schema
from agent_channel.tasks.model import TransitionRefused
from agent_channel_dev.local.apigw_events import route_event
from tests.support.clock import FakeClock
from tests.support.delivery_world import DeliveryWorld, fresh_delivery_world
from tests.support.gateway import ROUTE_FUNCTIONS, invoke
from tests.support.interleave import (
    Chooser,
    InterleavingError,
    Run,
    explaining,
    explore,
    random_chooser,
    run_once,
)

Scenario = Callable[[DeliveryWorld], tuple[list, Callable[[DeliveryWorld, Run], None]]]


@pytest.fixture(autouse=True)
def one_sweep_shard(monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock) -> None:
    monkeypatch.setattr(schema, "ROUTED_SHARDS", 1)


def received(world: DeliveryWorld, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = world.sink.json_messages(f"{name}=")
    return found


def publish(world: DeliveryWorld, message: dict[str, Any]) -> Callable[[], Any]:
    def act() -> Any:
        return history.publish(
            wiring.history(), world.agent_id, message, client=world.client, on_gone=None
        ).message

    return act


def dispatch_task(world: DeliveryWorld) -> int:
    task = wiring.task_store().create(topic_id=world.topic_id, agent_id=world.agent_id, content="x")
    task = wiring.task_store().start(task)
    dispatch(
        wiring.task_store(),
        task.task_id,
        client=world.client,
        on_gone=None,
        history=wiring.history(),
    )
    return task.task_id


def redeliver(world: DeliveryWorld) -> Callable[[], Any]:
    def act() -> Any:
        return redelivery.redeliver_due(
            wiring.task_store(),
            wiring.delivery_book(),
            wiring.task_events(),
            [world.agent_id],
            client=world.client,
            on_gone=None,
        ).redelivered

    return act


def send(world: DeliveryWorld, name: str, frame: dict[str, Any]) -> Callable[[], Any]:
    def act() -> Any:
        connection_id = f"{name}="
        event = route_event(
            frame["action"],
            connection_id,
            authorizer=world.gateway.contexts[connection_id],
            body=json.dumps(frame),
        )
        return invoke(ROUTE_FUNCTIONS[frame["action"]], event)

    return act


# ---------------------------------------------------------------- scenarios


def two_publishes(world: DeliveryWorld) -> tuple[list, Callable]:
    world.open("a")
    actors = [
        ("pub_1", publish(world, {"type": "note", "n": 1})),
        ("pub_2", publish(world, {"type": "note", "n": 2})),
    ]

    def check(world: DeliveryWorld, run: Run) -> None:
        kept = wiring.history().since(world.agent_id, 1, 10)
        assert [entry.seq for entry in kept] == [1, 2], f"not dense: {kept}"
        assert len({entry.epoch for entry in kept}) == 1, "one numbering"
        assert sorted(entry.body["n"] for entry in kept) == [1, 2], "each message kept once"
        sent = {run.results["pub_1"]["seq"], run.results["pub_2"]["seq"]}
        assert sent == {1, 2}
        assert sorted(m["seq"] for m in received(world, "a")) == [1, 2]

    return actors, check


def resume_races_a_publish(world: DeliveryWorld) -> tuple[list, Callable]:
    world.open("a")
    first = history.publish(
        wiring.history(),
        world.agent_id,
        {"type": "note", "n": 1},
        client=world.client,
        on_gone=None,
    ).message
    # Published while a's plugin was between sockets: kept, never received.
    wiring.history().append(world.agent_id, {"type": "note", "n": 2}, world.clock(), 3600)
    actors = [
        ("resume", send(world, "a", {"action": "resume", "after": 1, "epoch": first["epoch"]})),
        ("pub_3", publish(world, {"type": "note", "n": 3})),
    ]

    def check(world: DeliveryWorld, run: Run) -> None:
        got = received(world, "a")
        seqs = {m["seq"] for m in got if "seq" in m}
        assert {1, 2, 3} <= seqs, f"a message was lost to the resume: {got}"
        (answer,) = [m for m in got if m["type"] == "resumed"]
        # What the answer claims was sent is exactly what went out before it.
        before = got[: got.index(answer)]
        assert {m["seq"] for m in before if "seq" in m} >= set(range(1, answer["seq"] + 1))

    return actors, check


def ack_races_redelivery(world: DeliveryWorld) -> tuple[list, Callable]:
    world.open("a")
    task_id = dispatch_task(world)
    world.clock.advance(settings().redelivery_seconds)
    actors = [
        ("ack", send(world, "a", {"action": "ack", "task_id": task_id, "generation": 1})),
        ("redeliver", redeliver(world)),
    ]

    def check(world: DeliveryWorld, run: Run) -> None:
        task = wiring.task_store().get(task_id)
        assert task is not None and task.acknowledged, "the ack was lost"
        assert task.delivery_attempts <= 2
        writes = [who for who, op in run.trace if op == "UpdateItem"]
        redelivered = run.results["redeliver"]
        if writes and writes[0] == "ack":
            assert redelivered == [], f"redelivered after the ack committed: {run.trace}"
        redeliveries = [m for m in received(world, "a") if m.get("redelivery")]
        assert len(redeliveries) == len(redelivered) <= 1

    return actors, check


def finishing_races_redelivery(*finishers: str) -> Scenario:
    """A delegated dispatch, unacknowledged and due for redelivery, while the reply is
    claimed and/or the grace cancellation (its final, presence-guarded transition)
    takes the task back."""

    def scenario(world: DeliveryWorld) -> tuple[list, Callable]:
        world.open("a")
        task_id = dispatch_task(world)
        version = world.presence().version
        world.clock.advance(settings().redelivery_seconds)
        store = wiring.task_store()

        def claim() -> Any:
            try:
                return claim_reply(store, task_id, generation=1).status
            except ReplyRefused:
                return "refused"

        def grace() -> Any:
            task = store.get(task_id)
            assert task is not None
            try:
                return store.cancel_delegated(task, presence_version=version).status
            except TransitionRefused:
                return "refused"

        chosen = {"claim": claim, "grace": grace}
        actors = [(name, chosen[name]) for name in finishers] + [("redeliver", redeliver(world))]

        def check(world: DeliveryWorld, run: Run) -> None:
            task = store.get(task_id)
            assert task is not None
            winners = [name for name in finishers if run.results[name] != "refused"]
            assert len(winners) == 1, f"exactly one may finish the task: {run.results}"
            assert task.status is run.results[winners[0]]
            assert task.next_delivery_at is None, "a finished task is never redelivered"
            if run.results["redeliver"]:
                # Its conditional write came before the winner's transition.
                order = [who for who, op in run.trace if op in ("UpdateItem", "TransactWriteItems")]
                assert order.index("redeliver") < order.index(winners[0]), run.trace

        return actors, check

    scenario.__name__ = "_vs_".join((*finishers, "redelivery"))
    return scenario


def run_scenario(scenario: Scenario, clock: FakeClock, choose: Chooser) -> Run:
    with fresh_delivery_world(clock) as world:
        actors, check = scenario(world)
        run = run_once(actors, choose)
        with explaining(run):
            world.check_invariants()
            check(world, run)
        return run


SCENARIOS = [
    two_publishes,
    resume_races_a_publish,
    ack_races_redelivery,
    finishing_races_redelivery("claim"),
    finishing_races_redelivery("grace"),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_every_interleaving_delivers_at_least_once(
    scenario: Scenario, fake_clock: FakeClock
) -> None:
    runs = explore(lambda choose: run_scenario(scenario, fake_clock, choose))
    assert runs > 1
    print(f"{scenario.__name__}: {runs} interleavings")


RANDOM_RUNS = 30


def test_random_interleavings_of_claim_grace_and_redelivery(fake_clock: FakeClock) -> None:
    scenario = finishing_races_redelivery("claim", "grace")
    traces = {
        tuple(run_scenario(scenario, fake_clock, random_chooser(seed)).trace)
        for seed in range(RANDOM_RUNS)
    }
    assert len(traces) > RANDOM_RUNS // 3, "the random schedules should differ"


def test_the_harness_catches_an_unconditioned_sequence_allocation(
    fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_channel.storage.records import HistoryRecord

    original = HistoryRecord.save

    def blind_save(self: HistoryRecord, condition: Any = None, **kwargs: Any) -> Any:
        return original(self, **kwargs)  # the does-not-exist condition dropped

    monkeypatch.setattr(HistoryRecord, "save", blind_save)
    with pytest.raises(InterleavingError, match=r"not dense|each message kept once"):
        explore(lambda choose: run_scenario(two_publishes, fake_clock, choose))
