"""The reliable agent stream through the routes: numbered history, resume, a gap
and resync, acknowledgement, redelivery by the sweeper with backoff and give-up,
fencing of replies by generation, and bad input on the new actions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_channel.config import settings
from agent_channel.delivery import history as stream
from agent_channel.delivery.dispatch import StaleGeneration, claim_reply
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.storage import schema
from agent_channel.storage.records import HistoryRecord, TaskRecord
from agent_channel.tasks.dynamodb import DynamoTaskStore
from agent_channel.tasks.events import DISPATCH_GIVEN_UP
from agent_channel.tasks.model import Status
from agent_channel_dev.local.apigw_events import scheduled_event
from tests.support import management_server
from tests.support.clock import FakeClock
from tests.support.event_tap import install_event_tap
from tests.support.fixtures import World
from tests.support.gateway import Gateway, invoke
from tests.support.management_server import ManagementApi, connect_agent, connect_topic

tasks = DynamoTaskStore()
aws = management_server.aws
management = management_server.management


def backend(command: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = invoke("backend", command)
    return answer


def dispatched(world: World, content: str = "do it") -> int:
    task = tasks.start(
        tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content=content)
    )
    answer = backend({"op": "dispatch", "task_id": task.task_id})
    assert answer["ok"], answer
    return task.task_id


def decide(world: World, request_id: str) -> None:
    answer = backend(
        {
            "op": "decide_permission",
            "agent_id": world.agent_id,
            "request_id": request_id,
            "behavior": "allow",
            "decided_by": world.owner_id,
        }
    )
    assert answer["ok"], answer


def frames(management: ManagementApi, connection_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = management.sink.json_messages(connection_id)
    return found


def fresh(management: ManagementApi, connection_id: str, seen: int) -> list[dict[str, Any]]:
    return frames(management, connection_id)[seen:]


@pytest.fixture
def gateway() -> Gateway:
    return Gateway()


# ---------------------------------------------------------------- numbering


def test_every_message_to_the_agent_stream_is_numbered_densely_in_one_epoch(
    world: World, management: ManagementApi, gateway: Gateway
) -> None:
    socket = connect_agent(gateway, management.sink, world, "a=")
    first = dispatched(world)
    decide(world, "perm-1")
    second = dispatched(world)
    received = frames(management, socket)
    assert [m["seq"] for m in received] == [1, 2, 3]
    assert len({m["epoch"] for m in received}) == 1
    assert [m.get("task_id") for m in received] == [first, None, second]
    assert [m["generation"] for m in received if m["type"] == "dispatch"] == [1, 1]
    # Kept durably, exactly as sent.
    kept = wiring.history().since(world.agent_id, 1, 10)
    assert [entry.body for entry in kept] == received


def test_history_entries_expire_after_the_retention(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    decide(world, "perm-1")
    record = HistoryRecord.get(*schema.history_key(world.agent_id, 1), consistent_read=True)
    assert record.expires_at is not None
    retained = record.expires_at.timestamp() - fake_clock()
    assert retained == settings().history_retention_seconds


# ---------------------------------------------------------------- resume


def test_resume_sends_what_the_session_missed_in_order_then_resumed(
    world: World, management: ManagementApi, gateway: Gateway
) -> None:
    decide(world, "perm-1")  # seq 1, seen by an earlier socket of this plugin
    epoch = wiring.history().since(world.agent_id, 1, 1)[0].epoch
    decide(world, "perm-2")  # missed: no socket was open
    task_id = dispatched_when_routable(world, management, gateway)
    socket = "b="
    seen = len(frames(management, socket))

    gateway.send(socket, {"action": "resume", "after": 1, "epoch": epoch})

    got = fresh(management, socket, seen)
    assert [m.get("seq") for m in got[:-1]] == [2, 3]
    assert got[0]["request_id"] == "perm-2" and got[1]["task_id"] == task_id
    assert got[-1] == {"type": "resumed", "after": 1, "seq": 3, "epoch": epoch, "sent": 2}


def dispatched_when_routable(world: World, management: ManagementApi, gateway: Gateway) -> int:
    connect_agent(gateway, management.sink, world, "b=")
    return dispatched(world)


def test_resume_when_up_to_date_sends_only_resumed(
    world: World, management: ManagementApi, gateway: Gateway
) -> None:
    socket = connect_agent(gateway, management.sink, world, "a=")
    decide(world, "perm-1")
    epoch = frames(management, socket)[0]["epoch"]
    gateway.send(socket, {"action": "resume", "after": 1, "epoch": epoch})
    assert frames(management, socket)[-1] == {
        "type": "resumed",
        "after": 1,
        "seq": 1,
        "epoch": epoch,
        "sent": 0,
    }


def test_a_client_that_saw_nothing_resumes_from_the_start_of_the_history(
    world: World, management: ManagementApi, gateway: Gateway
) -> None:
    decide(world, "perm-1")
    decide(world, "perm-2")
    socket = connect_agent(gateway, management.sink, world, "a=")
    gateway.send(socket, {"action": "resume", "after": 0})
    got = frames(management, socket)
    assert [m.get("seq") for m in got] == [1, 2, 2]
    assert got[-1]["type"] == "resumed"


def test_expired_history_answers_a_gap_and_resync_sends_the_delegated_tasks(
    world: World, management: ManagementApi, gateway: Gateway
) -> None:
    socket = connect_agent(gateway, management.sink, world, "a=")
    first = dispatched(world)
    second = dispatched(world)
    epoch = frames(management, socket)[0]["epoch"]
    assert claim_reply(tasks, second).status is Status.DONE
    decide(world, "perm-1")
    # TTL took the oldest entries: a session that saw only seq 1 cannot be served.
    for seq in (1, 2):
        HistoryRecord(*schema.history_key(world.agent_id, seq)).delete()
    seen = len(frames(management, socket))

    gateway.send(socket, {"action": "resume", "after": 1, "epoch": epoch})
    assert fresh(management, socket, seen) == [{"type": "history_gap", "after": 1, "epoch": epoch}]

    seen = len(frames(management, socket))
    gateway.send(socket, {"action": "resync"})
    got = fresh(management, socket, seen)
    assert [(m["type"], m.get("task_id")) for m in got[:-1]] == [("dispatch", first)]
    assert got[0]["resync"] is True and got[0]["generation"] == 1
    assert got[-1] == {"type": "resynced", "seq": 3, "epoch": epoch, "task_ids": [first]}


def test_resume_of_another_epoch_or_too_far_behind_is_a_gap(
    world: World, management: ManagementApi, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = connect_agent(gateway, management.sink, world, "a=")
    for n in range(4):
        decide(world, f"perm-{n}")
    gateway.send(socket, {"action": "resume", "after": 1, "epoch": "0ther"})
    assert frames(management, socket)[-1]["type"] == "history_gap"
    monkeypatch.setattr(stream, "MAX_RESUME_MESSAGES", 2)
    epoch = frames(management, socket)[0]["epoch"]
    gateway.send(socket, {"action": "resume", "after": 1, "epoch": epoch})
    assert frames(management, socket)[-1]["type"] == "history_gap"


# ---------------------------------------------------------------- acknowledgement


def task_record(task_id: int) -> TaskRecord:
    return TaskRecord.get(*schema.task_key(task_id), consistent_read=True)


def test_an_ack_is_recorded_and_answered(
    world: World, management: ManagementApi, gateway: Gateway
) -> None:
    socket = connect_agent(gateway, management.sink, world, "a=")
    task_id = dispatched(world)
    gateway.send(socket, {"action": "ack", "task_id": task_id, "generation": 1})
    assert frames(management, socket)[-1] == {"type": "acked", "task_id": task_id, "generation": 1}
    task = tasks.get(task_id)
    assert task is not None and task.acknowledged
    # Acking twice (a lost answer, a duplicate) is harmless.
    gateway.send(socket, {"action": "ack", "task_id": task_id, "generation": 1})
    assert frames(management, socket)[-1]["type"] == "acked"


# ---------------------------------------------------------------- redelivery


def sweep() -> dict[str, Any]:
    """The presence sweeper, then the redelivery schedule, as every minute."""
    invoke("sweeper", scheduled_event())
    result: dict[str, Any] = invoke("redeliver", scheduled_event())
    return result


def keep_alive(gateway: Gateway, *sockets: str) -> None:
    for socket in sockets:
        gateway.send(socket, {"action": "heartbeat"})


def test_an_unacknowledged_dispatch_is_redelivered_with_backoff_until_acked(
    world: World, management: ManagementApi, gateway: Gateway, fake_clock: FakeClock
) -> None:
    socket = connect_agent(gateway, management.sink, world, "a=")
    task_id = dispatched(world)
    base = settings().redelivery_seconds

    assert sweep()["redelivered"] == 0, "not due yet"
    fake_clock.advance(base)
    keep_alive(gateway, socket)
    assert sweep()["redelivered"] == 1
    again = frames(management, socket)[-1]
    assert again["task_id"] == task_id and again["redelivery"] == 1 and again["generation"] == 1
    assert "seq" not in again, "a redelivery is not numbered again"

    fake_clock.advance(base)  # backoff doubled: not due yet
    keep_alive(gateway, socket)
    assert sweep()["redelivered"] == 0
    fake_clock.advance(base)
    keep_alive(gateway, socket)
    assert sweep()["redelivered"] == 1

    gateway.send(socket, {"action": "ack", "task_id": task_id, "generation": 1})
    fake_clock.advance(10 * base)
    keep_alive(gateway, socket)
    assert sweep()["redelivered"] == 0, "acknowledged: never again"


def test_a_dispatch_nobody_acknowledges_is_given_up_with_a_metric_and_an_event(
    world: World,
    management: ManagementApi,
    gateway: Gateway,
    fake_clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tap = install_event_tap(settings().event_bus_name, DISPATCH_GIVEN_UP)
    monkeypatch.setattr(
        "agent_channel.delivery.redelivery.settings",
        lambda: settings()._replace(max_delivery_attempts=2),
    )
    socket = connect_agent(gateway, management.sink, world, "a=")
    task_id = dispatched(world)
    redelivered = given_up = 0
    for _ in range(6):
        fake_clock.advance(15 * 60)
        keep_alive(gateway, socket)
        result = sweep()
        redelivered += result["redelivered"]
        given_up += result["given_up"]
    assert (redelivered, given_up) == (1, 1)
    assert status_of(task_id) is Status.DELEGATED, "the backend decides what comes next"
    (event,) = tap.drain()
    assert event["detail-type"] == DISPATCH_GIVEN_UP
    assert event["detail"]["task_id"] == task_id and event["detail"]["deliveries"] == 2
    assert '"DispatchesGivenUp"' in capsys.readouterr().out


def status_of(task_id: int) -> Status:
    task = tasks.get(task_id)
    assert task is not None
    return task.status


def test_a_claimed_or_cancelled_task_is_never_redelivered(
    world: World, management: ManagementApi, gateway: Gateway, fake_clock: FakeClock
) -> None:
    socket = connect_agent(gateway, management.sink, world, "a=")
    task_id = dispatched(world)
    claim_reply(tasks, task_id, generation=1)
    fake_clock.advance(settings().redelivery_seconds)
    keep_alive(gateway, socket)
    assert sweep()["redelivered"] == 0
    assert task_record(task_id).next_delivery_at is None


# ---------------------------------------------------------------- fencing


def test_a_reply_naming_an_older_generation_is_refused(world: World) -> None:
    task = tasks.start(tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="x"))
    TaskRecord(*schema.task_key(task.task_id)).update(
        actions=[TaskRecord.generation.set(2), TaskRecord.status.set("delegated")]
    )
    with pytest.raises(StaleGeneration):
        claim_reply(tasks, task.task_id, generation=1)
    assert status_of(task.task_id) is Status.DELEGATED
    answer = backend({"op": "claim_reply", "task_id": task.task_id, "generation": 1})
    assert answer == {
        "ok": False,
        "error": "stale_generation",
        "message": f"task {task.task_id} is at generation 2, not 1",
    }
    assert claim_reply(tasks, task.task_id, generation=2).status is Status.DONE


# ---------------------------------------------------------------- bad input


def snapshot(world: World) -> list[dict[str, Any]]:
    """Every item of the table: a refused frame must change none of them."""
    from agent_channel.storage.records import Record

    return sorted(
        (json.dumps(record.serialize(), sort_keys=True) for record in Record.scan()),
    )  # type: ignore[return-value]


BAD_FRAMES = [
    ({"action": "ack"}, "invalid_request"),
    ({"action": "ack", "task_id": "7", "generation": 1}, "invalid_request"),
    ({"action": "ack", "task_id": 7, "generation": 0}, "invalid_request"),
    ({"action": "ack", "task_id": True, "generation": 1}, "invalid_request"),
    ({"action": "ack", "task_id": 10**30, "generation": 1}, "invalid_request"),
    ({"action": "ack", "task_id": 999_999, "generation": 1}, "task_not_found"),
    ({"action": "resume"}, "invalid_request"),
    ({"action": "resume", "after": -1, "epoch": "e"}, "invalid_request"),
    ({"action": "resume", "after": 3}, "invalid_request"),
    ({"action": "resume", "after": 1, "epoch": 5}, "invalid_request"),
    ({"action": "resume", "after": 1, "epoch": "x" * 33}, "invalid_request"),
    ("[1, 2]", "invalid_request"),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES, ids=lambda v: str(v)[:40])
def test_bad_input_on_the_new_actions_gets_an_error_frame_and_changes_nothing(
    world: World, management: ManagementApi, gateway: Gateway, frame: Any, code: str
) -> None:
    socket = connect_agent(gateway, management.sink, world, "a=")
    dispatched(world)
    before = snapshot(world)
    seen = len(frames(management, socket))
    if isinstance(frame, str):
        # Not an object: only a route's own parsing can see it (API Gateway would
        # send it to $default); exercised on the stream function directly.
        from agent_channel_dev.local.apigw_events import route_event

        event = route_event("ack", socket, authorizer=gateway.contexts[socket], body=frame)
        invoke("stream", event)
    else:
        gateway.send(socket, frame)
    got = fresh(management, socket, seen)
    assert len(got) == 1 and got[0]["type"] == "error" and got[0]["error"] == code, got
    assert snapshot(world) == before


def test_an_unknown_sequence_is_refused(
    world: World, management: ManagementApi, gateway: Gateway
) -> None:
    socket = connect_agent(gateway, management.sink, world, "a=")
    decide(world, "perm-1")
    epoch = frames(management, socket)[0]["epoch"]
    before = snapshot(world)
    gateway.send(socket, {"action": "resume", "after": 9, "epoch": epoch})
    (answer,) = frames(management, socket)[1:]
    assert answer["error"] == "unknown_sequence"
    assert snapshot(world) == before


def test_an_ack_of_another_agents_task_is_refused_as_unknown(
    world: World, management: ManagementApi, gateway: Gateway
) -> None:
    other = accounts.create_agent("other", world.owner_id, "claude-code").user_id
    topic = accounts.create_topic(world.owner_id, "theirs", primary_agent_id=other).topic_id
    connect_agent(gateway, management.sink, world, "o=", agent_id=other)
    foreign = tasks.start(tasks.create(topic_id=topic, agent_id=other, content="theirs"))
    assert backend({"op": "dispatch", "task_id": foreign.task_id})["ok"]
    socket = connect_agent(gateway, management.sink, world, "a=")
    before = snapshot(world)
    gateway.send(socket, {"action": "ack", "task_id": foreign.task_id, "generation": 1})
    (answer,) = frames(management, socket)
    assert answer["error"] == "task_not_found" and answer["task_id"] == foreign.task_id
    assert snapshot(world) == before
    assert not tasks.get(foreign.task_id).acknowledged  # type: ignore[union-attr]


def test_acks_of_finished_or_older_dispatches_are_refused(
    world: World, management: ManagementApi, gateway: Gateway
) -> None:
    socket = connect_agent(gateway, management.sink, world, "a=")
    task_id = dispatched(world)
    gateway.send(socket, {"action": "ack", "task_id": task_id, "generation": 2})
    assert frames(management, socket)[-1]["error"] == "stale_generation"
    claim_reply(tasks, task_id)
    gateway.send(socket, {"action": "ack", "task_id": task_id, "generation": 1})
    assert frames(management, socket)[-1]["error"] == "not_delegated"


def test_only_a_channel_agent_socket_may_use_the_stream_actions(
    world: World, management: ManagementApi, gateway: Gateway
) -> None:
    socket = connect_topic(gateway, management.sink, world, "t=")
    for frame in (
        {"action": "ack", "task_id": 1, "generation": 1},
        {"action": "resume", "after": 0},
        {"action": "resync"},
    ):
        gateway.send(socket, frame)
    assert [m["error"] for m in frames(management, socket)] == ["not_subscribed"] * 3
