"""The heartbeat route without Lambda: template.yaml's DynamoDB integration,
rendered (VTL) and sent to moto as API Gateway would, and the restore route the
client answers ``restore_required`` with (docs/PROTOCOL.md)."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from agent_channel.config import settings
from agent_channel.lambda_kit import wiring
from agent_channel.presence.model import Presence
from agent_channel.storage import schema
from agent_channel.storage.records import Record
from agent_channel_dev.local import service_integration
from agent_channel_dev.local.apigw_events import scheduled_event
from tests.support import management_server
from tests.support.clock import FakeClock
from tests.support.fixtures import World
from tests.support.gateway import SERVICE_ROUTES, Gateway, invoke, run_service_route
from tests.support.management_server import ManagementApi, connect_agent, connect_topic

aws = management_server.aws
management = management_server.management

ACK = {"type": "heartbeat_ack"}
RESTORE_REQUIRED = {"type": "restore_required"}


def presence(world: World) -> Presence:
    found = wiring.presence_store().read(world.agent_id)
    assert found is not None
    return found


def restore(gateway: Gateway, connection_id: str) -> Any:
    """The restore route's reply (a two-way route: the function's answer)."""
    result = gateway.send(connection_id, {"action": "restore"})
    assert result["statusCode"] == 200
    return json.loads(result["body"])


def lease_item(agent_id: int, connection_id: str) -> Any:
    pk, sk = schema.lease_key(agent_id, connection_id)
    item = boto3.client("dynamodb").get_item(
        TableName=Record.Meta.table_name, Key={"pk": {"S": pk}, "sk": {"S": sk}}
    )
    return item.get("Item")


def test_a_heartbeat_renews_the_lease_to_the_millisecond_and_is_acknowledged(
    world: World, fake_clock: FakeClock, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "a1=", session_id="s1")
    before = presence(world)
    fake_clock.advance(29.375)
    assert gateway.send(socket, {"action": "heartbeat"}) == ACK
    after = presence(world)
    (lease,) = after.leases
    assert lease.last_seen_at == fake_clock()
    # Only the lease's timestamps: routing, version and token are as they were.
    assert (after.routing_on, after.version, after.subscription_token) == (
        before.routing_on,
        before.version,
        before.subscription_token,
    )
    item = lease_item(world.agent_id, socket)
    assert item is not None
    assert item["expires_at"] == {"N": str(int(fake_clock()) + 86400)}
    assert management.sink.messages(socket) == [], "the answer is the route response"


def test_the_key_comes_from_the_connection_and_the_authorizer_never_the_frame(
    world: World, fake_clock: FakeClock, management: ManagementApi
) -> None:
    gateway = Gateway()
    mine = connect_agent(gateway, management.sink, world, "mine=", session_id="s1")
    other = connect_agent(gateway, management.sink, world, "other=", session_id="s2")
    fake_clock.advance(20)
    forged = {
        "action": "heartbeat",
        "agent_id": world.other_ai_id,
        "connectionId": other,
        "connection_id": other,
    }
    assert gateway.send(mine, forged) == ACK
    seen = {lease.connection_id: lease.last_seen_at for lease in presence(world).leases}
    assert seen[mine] == fake_clock()
    assert seen[other] == fake_clock() - 20


def test_a_heartbeat_after_the_sweeper_reaped_the_lease_asks_for_a_restore(
    world: World, fake_clock: FakeClock, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "late=", session_id="s1")
    version = presence(world).version
    fake_clock.advance(settings().stale_after_seconds + 1)
    invoke("sweeper", scheduled_event())
    assert not presence(world).routing_on
    assert gateway.send(socket, {"action": "heartbeat"}) == RESTORE_REQUIRED
    assert lease_item(world.agent_id, socket) is None, "an UpdateItem never recreates a lease"

    assert restore(gateway, socket) == {"type": "restored"}
    restored = presence(world)
    assert restored.routing_on and restored.version > version
    [lease] = restored.leases
    assert (lease.connection_id, lease.session_id) == (socket, "s1")
    assert gateway.send(socket, {"action": "heartbeat"}) == ACK


def test_a_restore_of_a_live_lease_only_renews_it(
    world: World, fake_clock: FakeClock, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "twice=", session_id="s1")
    version = presence(world).version
    fake_clock.advance(10)
    assert restore(gateway, socket) == {"type": "restored"}
    after = presence(world)
    assert after.version == version, "a second restore frame bumps nothing"
    assert after.leases[0].last_seen_at == fake_clock()


def test_a_restore_never_brings_back_a_connection_that_disconnect_removed(
    world: World, fake_clock: FakeClock, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "gone=", session_id="s1")
    context = gateway.contexts[socket]
    gateway.disconnect(socket)
    gateway.contexts[socket] = context  # frames still in flight behind the close
    assert gateway.send(socket, {"action": "heartbeat"}) == RESTORE_REQUIRED
    refusal = restore(gateway, socket)
    assert refusal["type"] == "error" and refusal["error"] == "restore_refused"
    after = presence(world)
    assert not after.leases and not after.routing_on


def test_a_socket_without_a_lease_is_acknowledged_and_writes_nothing(
    world: World, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_topic(gateway, management.sink, world, "topic=")
    assert gateway.send(socket, {"action": "heartbeat"}) == ACK
    scanned = boto3.client("dynamodb").scan(TableName=Record.Meta.table_name)["Items"]
    assert not [item for item in scanned if item["sk"]["S"].startswith("LEASE#topic")]


def test_a_refusal_other_than_the_condition_is_an_error_frame_and_renews_nothing(
    world: World, fake_clock: FakeClock, management: ManagementApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "slow=", session_id="s1")
    seen = presence(world).leases[0].last_seen_at

    def throttled(*args: object, **kwargs: object) -> tuple[int, str]:
        body = {
            "__type": service_integration.DYNAMODB_ERROR_PREFIX
            + "ProvisionedThroughputExceededException",
            "message": "throttled",
        }
        return 400, json.dumps(body)

    monkeypatch.setattr(service_integration, "call_dynamodb", throttled)
    fake_clock.advance(5)
    answer = gateway.send(socket, {"action": "heartbeat"})
    assert answer["type"] == "error" and answer["error"] == "heartbeat_failed"
    assert presence(world).leases[0].last_seen_at == seen


def test_a_role_without_the_permission_fails_as_on_aws(
    world: World, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "denied=", session_id="s1")
    integration = SERVICE_ROUTES["heartbeat"]
    narrowed = integration.__class__(
        **{
            **integration.__dict__,
            "statements": ({"Effect": "Deny", "Action": "*", "Resource": "*"},),
        }
    )
    SERVICE_ROUTES["heartbeat"] = narrowed
    try:
        outcome = run_service_route(
            "heartbeat", socket, gateway.contexts[socket], '{"action": "heartbeat"}'
        )
    finally:
        SERVICE_ROUTES["heartbeat"] = integration
    assert outcome.status == 400
    assert json.loads(outcome.reply or "")["error"] == "heartbeat_failed"
