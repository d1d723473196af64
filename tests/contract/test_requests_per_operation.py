"""Round trips per presence operation, counted at botocore (requests really sent)."""

from __future__ import annotations

from agent_channel.presence.dynamodb import DynamoPresenceStore
from agent_channel.storage import schema
from agent_channel.storage.records import LeaseRecord
from agent_channel.tasks.dynamodb import DynamoTaskStore
from agent_channel.tasks.model import Status
from agent_channel_dev.instruments.request_counter import counting_requests
from tests.support.clock import FakeClock
from tests.support.fixtures import World
from tests.support.gateway import Gateway


def connect(gateway: Gateway, world: World, session: str) -> str:
    result = gateway.connect(
        {"agent_id": str(world.agent_id), "session_id": session}, token=world.owner_token
    )
    assert result.status == 200
    return result.connection_id


def test_connect_of_a_channel_agent_takes_two_dynamodb_requests(world: World) -> None:
    gateway = Gateway()
    with counting_requests() as counter:
        connect(gateway, world, "s1")
    # The authorizer's BatchGetItem and the connect transaction.
    assert counter.of("dynamodb") == ["BatchGetItem", "TransactWriteItems"]


def test_heartbeat_takes_one_dynamodb_request(world: World) -> None:
    gateway = Gateway()
    connection_id = connect(gateway, world, "s1")
    with counting_requests() as counter:
        gateway.send(connection_id, {"action": "heartbeat"})
    assert counter.of("dynamodb") == ["UpdateItem"]
    assert counter.count("scheduler") == 0


def test_disconnect_with_a_live_sibling_takes_three_dynamodb_requests(world: World) -> None:
    gateway = Gateway()
    first = connect(gateway, world, "s1")
    connect(gateway, world, "s2")
    with counting_requests() as counter:
        gateway.disconnect(first)
    assert counter.of("dynamodb") == ["TransactWriteItems", "DeleteItem", "Query"]
    # Plus the session-scoped grace schedule.
    assert counter.of("scheduler") == ["CreateSchedule"]


def test_last_one_out_takes_four_dynamodb_requests(world: World) -> None:
    gateway = Gateway()
    only = connect(gateway, world, "s1")
    with counting_requests() as counter:
        gateway.disconnect(only)
    assert counter.of("dynamodb") == [
        "TransactWriteItems",
        "DeleteItem",
        "Query",
        "TransactWriteItems",
    ]
    assert counter.of("scheduler") == ["CreateSchedule"]


def test_connect_beside_a_live_sibling_adds_one_query(world: World) -> None:
    """Reaping on subscribe reads the partition only when the authorizer saw routing
    on: with no sibling, $connect keeps its two requests (above)."""
    gateway = Gateway()
    connect(gateway, world, "s1")
    with counting_requests() as counter:
        connect(gateway, world, "s2")
    assert counter.of("dynamodb") == ["BatchGetItem", "TransactWriteItems", "Query"]


def test_connect_beside_a_crashed_sibling_reaps_it(world: World, fake_clock: FakeClock) -> None:
    gateway = Gateway()
    crashed = connect(gateway, world, "s1")
    lease = LeaseRecord(*schema.lease_key(world.agent_id, crashed))
    lease.update(actions=[LeaseRecord.last_seen_at.set(fake_clock() - 10_000)])
    with counting_requests() as counter:
        connect(gateway, world, "s2")
    assert counter.of("dynamodb") == [
        "BatchGetItem",
        "TransactWriteItems",
        "Query",
        "DeleteItem",
    ]
    # The crashed session's own topics get their session-scoped grace (and no
    # courtesy withdraw: no agent-wide grace was recorded as pending).
    assert counter.of("scheduler") == ["CreateSchedule"]


def test_connect_withdraws_the_agent_wide_grace_only_when_one_may_be_pending(
    world: World,
) -> None:
    gateway = Gateway()
    with counting_requests() as counter:
        first = connect(gateway, world, "s1")
    # Nothing was ever scheduled: no courtesy DeleteSchedule.
    assert counter.of("scheduler") == []
    gateway.disconnect(first)  # the last one out schedules the agent-wide grace
    with counting_requests() as counter:
        connect(gateway, world, "s1")
    assert counter.of("dynamodb") == ["BatchGetItem", "TransactWriteItems"]
    assert counter.of("scheduler") == ["DeleteSchedule"]
    with counting_requests() as counter:
        connect(gateway, world, "s2")  # that subscribe withdrew it and cleared the record
    assert counter.of("scheduler") == []


def test_task_transitions_take_one_transaction_and_return_what_they_wrote(
    world: World,
) -> None:
    tasks = DynamoTaskStore()
    task = tasks.start(
        tasks.create(
            topic_id=world.topic_id, agent_id=world.agent_id, content="x", author_id=world.owner_id
        )
    )
    with counting_requests() as counter:
        context = tasks.dispatch_context(task)
    # Agent, topic and author in one read.
    assert counter.of("dynamodb") == ["BatchGetItem"]
    assert context.author_name == "ada"
    for transition in (
        lambda t: tasks.delegate(t, "tool-1"),
        tasks.claim_reply,
    ):
        with counting_requests() as counter:
            task = transition(task)
        assert counter.of("dynamodb") == ["TransactWriteItems"]
        # Computed, not re-read: and exactly what a consistent read finds.
        assert task == tasks.get(task.task_id)
    assert task.status is Status.DONE
    assert task.pending_tool_call is None

    other = tasks.delegate(
        tasks.start(tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="y")),
        "tool-2",
    )
    assert other.pending_tool_call == "tool-2"
    presence = DynamoPresenceStore().read(world.agent_id)
    assert presence is not None
    version = presence.version
    with counting_requests() as counter:
        cancelled = tasks.cancel_delegated(other, presence_version=version)
    assert counter.of("dynamodb") == ["TransactWriteItems"]
    assert cancelled == tasks.get(other.task_id)
    assert cancelled.status is Status.CANCELLED
