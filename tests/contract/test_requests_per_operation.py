"""Round trips per presence operation, counted at botocore (requests really sent)."""

from __future__ import annotations

from agent_channel.storage import schema
from agent_channel.storage.records import LeaseRecord
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
    # The crashed session's own topics get their session-scoped grace.
    assert counter.of("scheduler") == ["DeleteSchedule", "DeleteSchedule", "CreateSchedule"]
