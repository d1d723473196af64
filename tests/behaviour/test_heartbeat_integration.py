"""The heartbeat route without Lambda: template.yaml's DynamoDB integration,
rendered (VTL) and sent to moto as API Gateway would, and the restore route a
client sends instead when its heartbeats ran late (docs/PROTOCOL.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

import boto3

from agent_channel.config import settings
from agent_channel.lambda_kit import wiring
from agent_channel.presence.model import Presence
from agent_channel.storage import schema
from agent_channel.storage.records import Record
from agent_channel_dev.local.apigw_events import scheduled_event
from tests.support import management_server
from tests.support.clock import FakeClock
from tests.support.fixtures import World
from tests.support.gateway import SERVICE_ROUTES, Gateway, invoke, run_service_route
from tests.support.management_server import ManagementApi, connect_agent, connect_topic

aws = management_server.aws
management = management_server.management


def presence(world: World) -> Presence:
    found = wiring.presence_store().read(world.agent_id)
    assert found is not None
    return found


def heartbeat(gateway: Gateway, connection_id: str) -> None:
    assert gateway.send(connection_id, {"action": "heartbeat"}) is None, "one-way: no answer"


def restore(gateway: Gateway, connection_id: str) -> None:
    result = gateway.send(connection_id, {"action": "restore"})
    assert result == {"statusCode": 200}, "one-way: no body"


def lease_item(agent_id: int, connection_id: str) -> Any:
    pk, sk = schema.lease_key(agent_id, connection_id)
    item = boto3.client("dynamodb").get_item(
        TableName=Record.Meta.table_name, Key={"pk": {"S": pk}, "sk": {"S": sk}}
    )
    return item.get("Item")


def test_a_heartbeat_renews_the_lease_to_the_millisecond_and_answers_nothing(
    world: World, fake_clock: FakeClock, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "a1=", session_id="s1")
    before = presence(world)
    fake_clock.advance(29.375)
    heartbeat(gateway, socket)
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
    assert management.sink.messages(socket) == [], "nothing posted either"


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
    assert gateway.send(mine, forged) is None
    seen = {lease.connection_id: lease.last_seen_at for lease in presence(world).leases}
    assert seen[mine] == fake_clock()
    assert seen[other] == fake_clock() - 20


def test_after_the_sweeper_reaped_the_lease_a_heartbeat_renews_nothing_and_a_restore_does(
    world: World, fake_clock: FakeClock, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "late=", session_id="s1")
    version = presence(world).version
    fake_clock.advance(settings().stale_after_seconds + 1)
    invoke("sweeper", scheduled_event())
    assert not presence(world).routing_on
    heartbeat(gateway, socket)
    assert lease_item(world.agent_id, socket) is None, "an UpdateItem never recreates a lease"

    restore(gateway, socket)
    restored = presence(world)
    assert restored.routing_on and restored.version > version
    [lease] = restored.leases
    assert (lease.connection_id, lease.session_id) == (socket, "s1")
    fake_clock.advance(30)
    heartbeat(gateway, socket)
    assert presence(world).leases[0].last_seen_at == fake_clock()


def test_a_restore_of_a_live_lease_only_renews_it(
    world: World, fake_clock: FakeClock, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "twice=", session_id="s1")
    version = presence(world).version
    fake_clock.advance(10)
    restore(gateway, socket)
    after = presence(world)
    assert after.version == version, "the safety-net restore bumps nothing"
    assert after.leases[0].last_seen_at == fake_clock()


def test_a_restore_never_brings_back_a_connection_that_disconnect_removed(
    world: World, fake_clock: FakeClock, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "gone=", session_id="s1")
    context = gateway.contexts[socket]
    gateway.disconnect(socket)
    gateway.contexts[socket] = context  # frames still in flight behind the close
    heartbeat(gateway, socket)
    restore(gateway, socket)
    after = presence(world)
    assert not after.leases and not after.routing_on


def test_a_socket_without_a_lease_writes_nothing(world: World, management: ManagementApi) -> None:
    gateway = Gateway()
    socket = connect_topic(gateway, management.sink, world, "topic=")
    heartbeat(gateway, socket)
    scanned = boto3.client("dynamodb").scan(TableName=Record.Meta.table_name)["Items"]
    assert not [item for item in scanned if item["sk"]["S"].startswith("LEASE#topic")]


def test_a_role_without_the_permission_fails_as_on_aws(
    world: World, fake_clock: FakeClock, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "denied=", session_id="s1")
    seen = presence(world).leases[0].last_seen_at
    integration = SERVICE_ROUTES["heartbeat"]
    denied = ({"Effect": "Deny", "Action": "*", "Resource": "*"},)
    SERVICE_ROUTES["heartbeat"] = dataclasses.replace(integration, statements=denied)
    fake_clock.advance(5)
    try:
        outcome = run_service_route(
            "heartbeat", socket, gateway.contexts[socket], '{"action": "heartbeat"}'
        )
    finally:
        SERVICE_ROUTES["heartbeat"] = integration
    assert (outcome.status, outcome.reply) == (400, None)
    assert presence(world).leases[0].last_seen_at == seen
