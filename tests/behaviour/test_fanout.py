"""Fan-out against a real @connections server: delivery, 410 Gone cleanup through
the presence path, partial failure, throttling, the size limit, the worker bound."""

from __future__ import annotations

import asyncio
import json
import threading

import boto3
import pytest
from aiohttp import web

from agent_channel.config import API_GATEWAY_MESSAGE_LIMIT, settings
from agent_channel.delivery import fanout as broadcast
from agent_channel.delivery import members as connections
from agent_channel.delivery.broadcast import broadcast_to_agent, broadcast_to_topic
from agent_channel.delivery.fanout import PayloadTooLarge, RetryPolicy
from agent_channel.delivery.members import stream_connections
from agent_channel.delivery.streams import agent_stream, topic_stream
from agent_channel.lambda_kit import wiring
from agent_channel.presence.model import Presence
from agent_channel.storage import records as models
from agent_channel.storage import schema
from agent_channel_dev.local.connections_api import (
    MemorySink,
    add_connection_routes,
    serve_in_thread,
)
from tests.support import management_server
from tests.support.clock import FakeClock
from tests.support.fixtures import World
from tests.support.gateway import Gateway
from tests.support.interleave import explore, run_once
from tests.support.management_server import (
    STAGE,
    ManagementApi,
    connect_agent,
    connect_topic,
)

# The shared ``aws`` fixture, overridden so that local URLs pass through moto, and
# the running @connections server.
aws = management_server.aws
management = management_server.management

FAST_RETRY = RetryPolicy(attempts=4, base_seconds=0.001, cap_seconds=0.005)


def grace_schedule_names() -> list[str]:
    client = boto3.client("scheduler")
    listed = client.list_schedules(GroupName=settings().schedule_group)
    return [schedule["Name"] for schedule in listed["Schedules"]]


def test_every_connection_of_the_agent_stream_receives_it_and_no_other(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    first = connect_agent(gateway, sink, world, "a1=", session_id="s1")
    second = connect_agent(gateway, sink, world, "a2=", session_id="s2")
    watcher = connect_topic(gateway, sink, world, "t1=")

    result = broadcast_to_agent(
        world.agent_id,
        {"type": "ping", "n": 1},
        client=management.client,
        on_gone=wiring.gone_handler(),
    )

    assert sorted(result.delivered) == [first, second]
    assert result.gone == ()
    assert result.failed == ()
    assert sink.json_messages(first) == [{"type": "ping", "n": 1}]
    assert sink.json_messages(second) == [{"type": "ping", "n": 1}]
    assert sink.messages(watcher) == []


def test_topic_broadcast_reaches_only_the_topic_stream(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    agent_socket = connect_agent(gateway, sink, world, "a1=")
    watcher = connect_topic(gateway, sink, world, "t1=")

    result = broadcast_to_topic(
        world.topic_id, {"x": 1}, client=management.client, on_gone=wiring.gone_handler()
    )

    assert result.delivered == (watcher,)
    assert sink.messages(agent_socket) == []


def test_gone_sibling_is_removed_and_routing_stays_on(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    gateway, sink = Gateway(), management.sink
    closed = connect_agent(gateway, sink, world, "a1=", session_id="s1")
    alive = connect_agent(gateway, sink, world, "a2=", session_id="s2")
    sink.hang_up(closed)  # the socket dies; API Gateway's $disconnect never comes
    # Open longer than the connect window: now a 410 proves the socket gone.
    fake_clock.advance(settings().connect_window_seconds)

    result = broadcast_to_agent(
        world.agent_id, {"n": 1}, client=management.client, on_gone=wiring.gone_handler()
    )

    assert result.gone == (closed,)
    assert result.delivered == (alive,)
    assert connections.get_connection(closed) is None
    assert stream_connections(agent_stream(world.agent_id)) == [alive]
    presence = wiring.presence_store().read(world.agent_id)
    assert presence is not None
    assert presence.routing_on
    assert [lease.connection_id for lease in presence.leases] == [alive]


def test_gone_last_lease_clears_routing_and_schedules_the_grace(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    gateway, sink = Gateway(), management.sink
    only = connect_agent(gateway, sink, world, "a1=")
    sink.hang_up(only)
    # Open longer than the connect window: now a 410 proves the socket gone.
    fake_clock.advance(settings().connect_window_seconds)

    result = broadcast_to_agent(
        world.agent_id, {"n": 1}, client=management.client, on_gone=wiring.gone_handler()
    )

    assert result.gone == (only,)
    assert result.delivered == ()
    presence = wiring.presence_store().read(world.agent_id)
    assert presence is not None
    assert not presence.routing_on
    assert presence.subscription_token is None
    assert presence.leases == ()
    assert stream_connections(agent_stream(world.agent_id)) == []
    assert f"grace-{world.agent_id}" in grace_schedule_names()
    # The connection's own $disconnect, arriving late, finds nothing to do.
    gateway.disconnect(only)
    assert grace_schedule_names().count(f"grace-{world.agent_id}") == 1


def test_gone_topic_socket_leaves_the_stream_without_touching_presence(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    gateway, sink = Gateway(), management.sink
    agent_socket = connect_agent(gateway, sink, world, "a1=")
    watcher = connect_topic(gateway, sink, world, "t1=")
    sink.hang_up(watcher)
    # Open longer than the connect window: now a 410 proves the socket gone.
    fake_clock.advance(settings().connect_window_seconds)

    result = broadcast_to_topic(
        world.topic_id, {"n": 1}, client=management.client, on_gone=wiring.gone_handler()
    )

    assert result.gone == (watcher,)
    assert stream_connections(topic_stream(world.topic_id)) == []
    assert connections.get_connection(watcher) is None
    presence = wiring.presence_store().read(world.agent_id)
    assert presence is not None
    assert presence.routing_on
    assert [lease.connection_id for lease in presence.leases] == [agent_socket]


def test_gone_membership_without_its_connection_item_is_dropped(
    world: World, management: ManagementApi
) -> None:
    # A $disconnect that removed the connection item but crashed before the
    # membership (or a membership written by hand) must not be posted to forever.
    stream = agent_stream(world.agent_id)
    models.StreamMemberRecord(
        *schema.member_key(stream, "orphan="), stream=stream, connection_id="orphan="
    ).save()

    result = broadcast_to_agent(
        world.agent_id, {"n": 1}, client=management.client, on_gone=wiring.gone_handler()
    )

    assert result.gone == ("orphan=",)
    assert stream_connections(stream) == []


def test_partial_failure_reports_each_connection_and_keeps_the_failed_one(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    gateway, sink = Gateway(), management.sink
    ok = connect_agent(gateway, sink, world, "ok=", session_id="s1")
    gone = connect_agent(gateway, sink, world, "gone=", session_id="s2")
    broken = connect_agent(gateway, sink, world, "broken=", session_id="s3")
    sink.hang_up(gone)
    # Open longer than the connect window: now a 410 proves the socket gone.
    fake_clock.advance(settings().connect_window_seconds)
    sink.break_connection(broken)

    result = broadcast_to_agent(
        world.agent_id,
        {"n": 1},
        client=management.client,
        on_gone=wiring.gone_handler(),
        retry=FAST_RETRY,
    )

    assert result.delivered == (ok,)
    assert result.gone == (gone,)
    assert result.failed == (broken,)
    # A 500 is no verdict on the socket: it stays, with its lease.
    assert sorted(stream_connections(agent_stream(world.agent_id))) == sorted([ok, broken])
    presence = wiring.presence_store().read(world.agent_id)
    assert presence is not None
    assert sorted(lease.connection_id for lease in presence.leases) == sorted([ok, broken])


def test_throttled_post_is_retried_until_it_lands(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    busy = connect_agent(gateway, sink, world, "busy=")
    sink.throttle(busy, 2)

    result = broadcast_to_agent(
        world.agent_id,
        {"n": 1},
        client=management.client,
        on_gone=wiring.gone_handler(),
        retry=FAST_RETRY,
    )

    assert result.delivered == (busy,)
    assert result.throttle_retries == 2
    assert sink.json_messages(busy) == [{"n": 1}]


def test_throttling_that_never_ends_is_a_failure_not_a_hang(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    busy = connect_agent(gateway, sink, world, "busy=")
    sink.throttle(busy, 100)

    result = broadcast_to_agent(
        world.agent_id,
        {"n": 1},
        client=management.client,
        on_gone=wiring.gone_handler(),
        retry=FAST_RETRY,
    )

    assert result.failed == (busy,)
    assert result.throttle_retries == FAST_RETRY.attempts - 1
    assert sink.messages(busy) == []
    assert stream_connections(agent_stream(world.agent_id)) == [busy]


def _payload_of_encoded_size(size: int) -> dict[str, str]:
    overhead = len(broadcast.encode({"d": ""}))
    return {"d": "x" * (size - overhead)}


def test_payload_over_the_limit_is_refused_before_anything_is_sent(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    target = connect_agent(gateway, sink, world, "a1=")

    at_limit = _payload_of_encoded_size(API_GATEWAY_MESSAGE_LIMIT)
    assert broadcast_to_agent(
        world.agent_id, at_limit, client=management.client, on_gone=wiring.gone_handler()
    ).delivered == (target,)
    with pytest.raises(PayloadTooLarge):
        broadcast_to_agent(
            world.agent_id,
            _payload_of_encoded_size(API_GATEWAY_MESSAGE_LIMIT + 1),
            client=management.client,
            on_gone=wiring.gone_handler(),
        )
    # Measured in encoded bytes: 70,000 two-byte characters are 140,000 bytes.
    with pytest.raises(PayloadTooLarge):
        broadcast_to_agent(
            world.agent_id,
            {"d": "é" * 70_000},
            client=management.client,
            on_gone=wiring.gone_handler(),
        )
    assert len(sink.messages(target)) == 1


class _CountingSink(MemorySink):
    """Tracks how many posts are in flight at once (each takes a little while)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak = 0
        self.guard = threading.Lock()

    async def send(self, connection_id: str, data: bytes) -> bool:
        with self.guard:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.02)
            return await super().send(connection_id, data)
        finally:
            with self.guard:
                self.in_flight -= 1


def test_posts_run_concurrently_but_never_above_the_worker_bound() -> None:
    sink = _CountingSink()
    ids = [f"c{i}=" for i in range(40)]
    for connection_id in ids:
        sink.open(connection_id)
    app = web.Application()
    add_connection_routes(app, sink, stage=STAGE)
    with serve_in_thread(app) as server:
        client = wiring.management_api(server.endpoint_url(STAGE))
        result = broadcast.deliver(
            "agent:user:1", ids, b"{}", client=client, workers=8, on_gone=None
        )
    assert sorted(result.delivered) == sorted(ids)
    assert 1 < sink.peak <= 8


def test_gone_cleanup_racing_the_late_disconnect_settles_once(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    """Every interleaving of the Gone path and the connection's own $disconnect:
    routing ends cleared, nothing is left behind, and exactly one of them (the
    one that took the lease) schedules the grace."""
    from agent_channel.config import CHANNEL_AGENT_MODEL
    from agent_channel.identity import accounts

    counter = iter(range(1_000_000))

    def run_one(choose: object) -> None:
        agent = accounts.create_agent("claude", world.owner_id, CHANNEL_AGENT_MODEL)
        agent_id = int(agent.user_id)
        gateway = Gateway()
        connection_id = f"race{next(counter)}="
        connect_agent(gateway, management.sink, world, connection_id, agent_id=agent_id)
        run = run_once(
            [
                ("gone", lambda: wiring.gone_handler()(connection_id, agent_stream(agent_id))),
                ("disconnect", lambda: gateway.disconnect(connection_id)),
            ],
            choose,  # type: ignore[arg-type]
        )
        presence = wiring.presence_store().read(agent_id)
        assert presence is not None, run.trace
        assert not presence.routing_on, run.trace
        assert presence.leases == (), run.trace
        assert connections.get_connection(connection_id) is None, run.trace
        assert stream_connections(agent_stream(agent_id)) == [], run.trace
        grace = [
            params
            for params in run.calls("scheduler", ("CreateSchedule", "UpdateSchedule"))
            if params["Name"] == f"grace-{agent_id}"
        ]
        assert len(grace) == 1, run.trace

    assert explore(run_one) > 1


def test_result_is_reported_as_plain_json(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    connect_agent(gateway, sink, world, "a1=")
    result = broadcast_to_agent(
        world.agent_id, {"n": 1}, client=management.client, on_gone=wiring.gone_handler()
    )
    assert json.loads(json.dumps(result.as_dict())) == {
        "stream": agent_stream(world.agent_id),
        "delivered": ["a1="],
        "gone": [],
        "failed": [],
    }


def test_stream_members_are_read_across_pages(world: World) -> None:
    stream = agent_stream(world.agent_id)
    ids = [f"m{i}=" for i in range(7)]
    for connection_id in ids:
        models.StreamMemberRecord(
            *schema.member_key(stream, connection_id), stream=stream, connection_id=connection_id
        ).save()
    other = topic_stream(world.topic_id)
    models.StreamMemberRecord(
        *schema.member_key(other, "elsewhere="), stream=other, connection_id="elsewhere="
    ).save()

    assert sorted(stream_connections(stream, page_size=2)) == sorted(ids)
    assert stream_connections(other) == ["elsewhere="]


def test_answering_one_connection_reports_gone_without_cleaning_up(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    error = broadcast.error_message("oops", "something")

    assert broadcast.send_to_connection(socket, error, client=management.client) is True
    sink.hang_up(socket)
    assert broadcast.send_to_connection(socket, error, client=management.client) is False

    assert sink.json_messages(socket) == [error]
    # Its own route invocation answered it; its $disconnect does the removing.
    assert connections.get_connection(socket) is not None


def presence_of(world: World) -> Presence:
    presence = wiring.presence_store().read(world.agent_id)
    assert presence is not None
    return presence


def test_a_410_within_the_connect_window_removes_nothing(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    # $connect has written the lease and membership, but API Gateway has not
    # finished the handshake: posts answer 410 for now.
    gateway, sink = Gateway(), management.sink
    only = connect_agent(gateway, sink, world, "young=", session_id="s1")
    sink.hang_up(only)
    fake_clock.advance(settings().connect_window_seconds - 1)

    result = broadcast_to_agent(
        world.agent_id, {"n": 1}, client=management.client, on_gone=wiring.gone_handler()
    )

    assert result.gone == (only,)
    assert connections.get_connection(only) is not None, "the young connection was kept"
    assert connections.stream_connections(f"agent:user:{world.agent_id}") == [only]
    assert presence_of(world).routing_on
    assert [lease.connection_id for lease in presence_of(world).leases] == [only]

    # Once the window has passed, the same 410 is proof: the $disconnect path runs.
    fake_clock.advance(1)
    broadcast_to_agent(
        world.agent_id, {"n": 2}, client=management.client, on_gone=wiring.gone_handler()
    )
    assert connections.get_connection(only) is None
    assert not presence_of(world).routing_on
