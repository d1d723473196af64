"""End to end through the handlers, as API Gateway and Scheduler drive them: a
channel agent with a delegated task loses its socket; the grace schedule is in
Scheduler; running its target with its recorded input cancels the task, unless the
agent came back within the window."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from agent_channel.config import settings
from agent_channel.grace.scheduler import schedule_name
from agent_channel.identity import accounts
from agent_channel.identity.accounts import Topic
from agent_channel.lambda_kit import wiring
from agent_channel.tasks.dynamodb import DynamoTaskStore
from tests.support.clock import FakeClock
from tests.support.event_tap import EventTap, install_event_tap
from tests.support.fixtures import World
from tests.support.gateway import Gateway, invoke
from tests.support.schedules import get_schedule

tasks = DynamoTaskStore()


@pytest.fixture
def tap(aws: None) -> EventTap:
    return install_event_tap(settings().event_bus_name)


def delegated_task(topic_id: float, agent_id: float) -> int:
    task = tasks.create(topic_id=int(topic_id), agent_id=int(agent_id), content="summarise")
    return int(tasks.delegate(tasks.start(task), "Read:notes.md").task_id)


def status(task_id: int) -> str:
    task = tasks.get(task_id)
    assert task is not None
    return str(task.status)


def lease_token(agent_id: int, connection_id: str) -> str:
    seen = wiring.presence_store().read(agent_id)
    assert seen is not None
    [lease] = [lease for lease in seen.leases if lease.connection_id == connection_id]
    return lease.token


def expected_at(moment: float) -> str:
    return f"at({datetime.fromtimestamp(moment, tz=UTC):%Y-%m-%dT%H:%M:%S})"


def connect(gateway: Gateway, world: World, session_id: str) -> str:
    query = {"agent_id": str(world.agent_id), "session_id": session_id}
    connected = gateway.connect(query, token=world.owner_token)
    assert connected.status == 200
    return connected.connection_id


def drop_and_read_schedule(
    gateway: Gateway, world: World, fake_clock: FakeClock, connection_id: str, session: str | None
) -> dict[str, Any]:
    token = lease_token(world.agent_id, connection_id)
    dropped_at = fake_clock.value
    gateway.disconnect(connection_id)
    schedule = get_schedule(schedule_name(world.agent_id, session))
    assert schedule["ScheduleExpression"] == expected_at(dropped_at + settings().grace_seconds)
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["ActionAfterCompletion"] == "DELETE"
    assert schedule["Target"]["Arn"] == settings().cancel_offline_arn
    payload: dict[str, Any] = json.loads(schedule["Target"]["Input"])
    expected: dict[str, Any] = {"agent_id": world.agent_id, "subscription_token": token}
    if session:
        expected["session_id"] = session
    assert payload == expected
    return payload


def fire(payload: dict[str, Any]) -> dict[str, Any]:
    """What Scheduler does at the due time: invoke the target with the recorded input."""
    answer: dict[str, Any] = invoke("cancel_offline", payload)
    return answer


def test_the_grace_cancels_a_delegated_task_of_an_agent_that_stayed_away(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    gateway = Gateway()
    connection_id = connect(gateway, world, "s1")
    task_id = delegated_task(world.topic_id, world.agent_id)

    payload = drop_and_read_schedule(gateway, world, fake_clock, connection_id, None)
    # Scheduler fires within the minute after the due time.
    fake_clock.advance(settings().grace_seconds + 59)
    answer = fire(payload)

    assert answer["ok"] is True
    assert answer["outcome"] == "cancelled"
    assert answer["cancelled"] == [task_id]
    assert status(task_id) == "cancelled"
    assert tasks.held_slots(world.agent_id) == []
    [event] = tap.drain()
    assert int(event["detail"]["task_id"]) == task_id
    assert int(event["detail"]["topic_id"]) == world.topic_id
    # At least once: the same input again changes nothing.
    assert fire(payload)["cancelled"] == []
    assert tap.drain() == []


def test_a_reconnect_within_the_window_keeps_the_task(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    gateway = Gateway()
    connection_id = connect(gateway, world, "s1")
    task_id = delegated_task(world.topic_id, world.agent_id)

    payload = drop_and_read_schedule(gateway, world, fake_clock, connection_id, None)
    fake_clock.advance(10)
    connect(gateway, world, "s1")

    with pytest.raises(ClientError) as gone:
        get_schedule(schedule_name(world.agent_id, None))
    assert gone.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # Had the courtesy withdraw failed, the schedule would still fire: it must not act.
    fake_clock.advance(settings().grace_seconds)
    answer = fire(payload)

    assert answer["outcome"] == "routed_again"
    assert status(task_id) == "delegated"
    assert tasks.held_slots(world.agent_id) == [task_id]
    assert tap.drain() == []


def test_a_session_that_drops_while_a_sibling_stays_loses_only_its_own_topic(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    gateway = Gateway()
    s1 = connect(gateway, world, "s1")
    connect(gateway, world, "s2")
    own = accounts.create_topic(
        world.owner_id, "own", primary_agent_id=world.agent_id, session_id="s1"
    )
    assert isinstance(own, Topic)
    private = delegated_task(own.topic_id, world.agent_id)
    shared = delegated_task(world.topic_id, world.agent_id)

    payload = drop_and_read_schedule(gateway, world, fake_clock, s1, "s1")
    fake_clock.advance(settings().grace_seconds)
    answer = fire(payload)

    assert answer["scope"] == "session"
    assert answer["cancelled"] == [private]
    assert status(shared) == "delegated", "the live sibling can still reply there"
    seen = wiring.presence_store().read(world.agent_id)
    assert seen is not None
    assert seen.routing_on
    assert [int(event["detail"]["task_id"]) for event in tap.drain()] == [private]
