"""unregister_agent through the backend function: closing an agent for work, with a
real @connections server whose sockets it closes."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from agent_channel.config import settings
from agent_channel.delivery.streams import agent_stream
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.presence.model import Subscription
from agent_channel.presence.store import MAX_STALE_PER_CLEAR, AccessDenied
from agent_channel.storage import schema
from agent_channel.storage.records import ConnectionRecord, Record
from agent_channel.tasks.dynamodb import DynamoTaskStore
from agent_channel.tasks.model import Status
from agent_channel_dev.instruments.lambda_context import LocalContext
from tests.support import management_server
from tests.support.event_tap import EventTap, install_event_tap
from tests.support.fixtures import World, write_crashed_leases
from tests.support.gateway import Gateway
from tests.support.management_server import ManagementApi, connect_agent

tasks = DynamoTaskStore()

aws = management_server.aws
management = management_server.management


@pytest.fixture(autouse=True)
def closer_on_the_local_server(management: ManagementApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend closes sockets with boto3's client, pointed at the running server."""
    from functions.backend import app

    client = boto3.client(
        "apigatewaymanagementapi", endpoint_url=management.server.endpoint_url("test")
    )
    monkeypatch.setattr(app.context_for_commands, "closer_factory", lambda: client)


@pytest.fixture
def tap(aws: None) -> EventTap:
    return install_event_tap(settings().event_bus_name)


def invoke(command: Any) -> dict[str, Any]:
    from functions.backend import app

    result = app.handler(command, LocalContext(function_name="backend"))
    decoded: dict[str, Any] = json.loads(json.dumps(result))
    return decoded


def status(task_id: int) -> str:
    task = tasks.get(task_id)
    assert task is not None
    return task.status.value


def schedules() -> list[str]:
    found = boto3.client("scheduler").list_schedules(GroupName=settings().schedule_group)
    return [schedule["Name"] for schedule in found["Schedules"]]


def table() -> list[dict[str, Any]]:
    return sorted(
        (record.serialize() for record in Record.scan()), key=lambda item: json.dumps(item)
    )


def busy_agent(world: World, management: ManagementApi) -> dict[str, Any]:
    """Two live sessions (s1 with its own topic), a session s3 that left (its own
    topic's grace pending), and work in every status."""
    gateway, sink = Gateway(), management.sink
    private = accounts.create_topic(
        world.owner_id, "s1", primary_agent_id=world.agent_id, session_id="s1"
    )
    left = accounts.create_topic(
        world.owner_id, "s3", primary_agent_id=world.agent_id, session_id="s3"
    )
    connect_agent(gateway, sink, world, "a1=", session_id="s1")
    connect_agent(gateway, sink, world, "a2=", session_id="s2")
    connect_agent(gateway, sink, world, "a3=", session_id="s3")
    gateway.disconnect("a3=")

    def make(topic_id: int, status: Status) -> int:
        waiting = Status.PENDING if status is Status.PENDING else Status.QUEUED
        task = tasks.create(topic_id=topic_id, agent_id=world.agent_id, content="x", status=waiting)
        if status in (Status.RUNNING, Status.DELEGATED, Status.DONE):
            task = tasks.start(task)
        if status in (Status.DELEGATED, Status.DONE):
            task = tasks.delegate(task, "Bash:ls")
        if status is Status.DONE:
            task = tasks.claim_reply(task)
        return int(task.task_id)

    return {
        "gateway": gateway,
        "private": int(private.topic_id),
        "left": int(left.topic_id),
        "delegated": make(world.topic_id, Status.DELEGATED),
        "delegated_private": make(private.topic_id, Status.DELEGATED),
        "running": make(private.topic_id, Status.RUNNING),
        "pending": make(private.topic_id, Status.PENDING),
        "queued": make(world.topic_id, Status.QUEUED),
        "done": make(world.topic_id, Status.DONE),
    }


OPEN = ("delegated", "delegated_private", "running", "pending", "queued")


def test_unregister_closes_the_agent_for_work(
    world: World, management: ManagementApi, tap: EventTap
) -> None:
    agent = busy_agent(world, management)
    assert schedules(), "s3's session grace is pending"

    answer = invoke(
        {"op": "unregister_agent", "agent_id": world.agent_id, "acting_user_id": world.owner_id}
    )

    assert answer["ok"] is True, answer
    assert answer["already_unregistered"] is False
    assert sorted(answer["closed_connections"]) == ["a1=", "a2="]
    # Every open task cancelled, the queue before the delegated work.
    assert sorted(answer["cancelled"]) == sorted(agent[key] for key in OPEN)
    delegated = {agent["delegated"], agent["delegated_private"]}
    assert set(answer["cancelled"][-2:]) == delegated
    for key in OPEN:
        assert status(agent[key]) == "cancelled"
    assert status(agent["done"]) == "done"
    assert tasks.held_slots(world.agent_id) == []
    assert tasks.get(agent["delegated"]).pending_tool_call is None  # type: ignore[union-attr]
    # One event per cancelled task, with its reason and what it was.
    events = [event["detail"] for event in tap.drain()]
    assert [int(event["task_id"]) for event in events] == answer["cancelled"]
    assert {event["reason"] for event in events} == {"agent_unregistered"}
    assert {event["previous_status"] for event in events} == {
        "queued",
        "pending",
        "running",
        "delegated",
    }
    # Sockets closed through @connections DELETE, and their items gone.
    assert not management.sink.is_open("a1=")
    assert not management.sink.is_open("a2=")
    presence = wiring.presence_store().read(world.agent_id)
    assert presence is not None
    assert not presence.routing_on and presence.leases == ()
    # Session topics archived, grace schedules withdrawn.
    assert sorted(answer["archived_topics"]) == sorted([agent["private"], agent["left"]])
    topic = accounts.get_topic(agent["private"])
    assert topic is not None and topic.archived
    assert schedules() == []
    assert answer["withdrawn_schedules"] >= 1


def test_unregister_deletes_more_leases_than_one_transaction_holds(
    world: World, management: ManagementApi
) -> None:
    """Leases beyond the close's transaction are deleted before it: none is left,
    whatever its place in the agent's partition."""
    connect_agent(Gateway(), management.sink, world, "a1=", session_id="s1")
    write_crashed_leases(world.agent_id, MAX_STALE_PER_CLEAR + 20, 0)
    store = wiring.presence_store()
    before = store.read(world.agent_id)
    assert before is not None and len(before.leases) > MAX_STALE_PER_CLEAR

    answer = invoke({"op": "unregister_agent", "agent_id": world.agent_id})

    assert answer["ok"] is True, answer
    after = store.read(world.agent_id)
    assert after is not None
    assert not after.routing_on
    assert after.leases == (), f"{len(after.leases)} leases outlived the unregister"


def test_after_unregister_the_agent_takes_no_connect_no_task_no_dispatch(
    world: World, management: ManagementApi
) -> None:
    busy_agent(world, management)
    assert invoke({"op": "unregister_agent", "agent_id": world.agent_id})["ok"]
    gateway = Gateway()

    refused = gateway.connect(
        {"agent_id": str(world.agent_id), "session_id": "s9"}, token=world.owner_token
    )
    created = invoke(
        {
            "op": "create_task",
            "agent_id": world.agent_id,
            "topic_id": world.topic_id,
            "content": "x",
        }
    )

    assert refused.status == 403
    assert created["ok"] is False and created["error"] == "agent_unregistered"
    agent = accounts.get_user(world.agent_id)
    assert agent is not None and agent.unregistered


def test_a_subscribe_or_restore_that_passed_the_authorizer_before_is_refused_in_its_write(
    world: World, management: ManagementApi
) -> None:
    """The authorizer read the agent before the unregister committed; the write
    itself is conditioned on the agent not being unregistered."""
    assert invoke({"op": "unregister_agent", "agent_id": world.agent_id})["ok"]
    store = wiring.presence_store()
    late = Subscription("late=", world.owner_id, world.agent_id, "s1")
    # A socket whose connection item survived (its heartbeat would try a restore).
    ConnectionRecord(
        *schema.connection_key("late="),
        connection_id="late=",
        user_id=world.owner_id,
        stream=agent_stream(world.agent_id),
        agent_id=world.agent_id,
        holds_lease=True,
        connected_at=0,
    ).save()

    with pytest.raises(AccessDenied):
        store.subscribe(late, "feedfacefeedface", 1.0)
    restored = store.restore(late, "feedfacefeedface", 1.0)

    assert restored is False
    presence = store.read(world.agent_id)
    assert presence is not None
    assert not presence.routing_on and presence.leases == ()


def test_unregister_is_idempotent(world: World, management: ManagementApi, tap: EventTap) -> None:
    busy_agent(world, management)
    first = invoke({"op": "unregister_agent", "agent_id": world.agent_id})
    tap.drain()
    tasks_after_first = {
        task.task_id: task.status for s in Status for task in tasks.by_status(world.agent_id, s)
    }

    again = invoke({"op": "unregister_agent", "agent_id": world.agent_id})

    assert first["ok"] and again["ok"]
    assert again["already_unregistered"] is True
    assert again["cancelled"] == []
    assert again["closed_connections"] == []
    assert again["archived_topics"] == []
    assert tap.drain() == [], "nothing announced twice"
    assert {
        task.task_id: task.status for s in Status for task in tasks.by_status(world.agent_id, s)
    } == tasks_after_first


@pytest.mark.parametrize("who", ["stranger", "missing"])
def test_only_the_owner_may_unregister_and_nothing_changes_otherwise(
    world: World, management: ManagementApi, who: str
) -> None:
    busy_agent(world, management)
    before = table()
    agent_id = world.agent_id if who == "stranger" else 987654

    answer = invoke(
        {"op": "unregister_agent", "agent_id": agent_id, "acting_user_id": world.stranger_id}
    )

    # The same answer whether the agent is someone else's or does not exist.
    assert answer["ok"] is False and answer["error"] == "not_found"
    assert str(agent_id) in answer["message"]
    assert table() == before
    assert management.sink.is_open("a1=")


@pytest.mark.parametrize(
    "command",
    [
        {"op": "unregister_agent"},
        {"op": "unregister_agent", "agent_id": "7"},
        {"op": "unregister_agent", "agent_id": 7, "acting_user_id": -1},
    ],
)
def test_bad_unregister_commands_change_nothing(
    world: World, management: ManagementApi, command: dict[str, Any]
) -> None:
    before = table()
    answer = invoke(command)
    assert answer["ok"] is False and answer["error"] == "invalid_command"
    assert table() == before
