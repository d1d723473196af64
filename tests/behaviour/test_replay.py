"""replay_permissions and $default, driven through the route functions as API
Gateway would, with every answer read back from a real @connections server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_channel.config import CHANNEL_AGENT_MODEL, settings
from agent_channel.delivery import decisions
from agent_channel.delivery.dynamodb import BATCH_GET_LIMIT
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.storage import schema
from agent_channel.storage.records import Record
from tests.support import management_server
from tests.support.clock import FakeClock
from tests.support.fixtures import World
from tests.support.gateway import Gateway
from tests.support.management_server import (
    ManagementApi,
    connect_agent,
    connect_topic,
)

# The shared ``aws`` fixture, overridden so that local URLs pass through moto, and
# the running @connections server.
aws = management_server.aws
management = management_server.management


def decided(agent_id: int, request_id: str, behavior: str = "allow", by: int = 0) -> None:
    from agent_channel.storage.records import UserRecord

    owner = by or int(UserRecord.get(*schema.user_key(agent_id)).created_by)
    decisions.record_decision(
        wiring.decision_store(),
        agent_id=agent_id,
        request_id=request_id,
        behavior=behavior,
        decided_by=owner,
    )


def replay(gateway: Gateway, connection_id: str, request_ids: Any) -> None:
    gateway.send(connection_id, {"action": "replay_permissions", "request_ids": request_ids})


def decision(world: World, request_id: str, behavior: str = "allow") -> dict[str, Any]:
    return {
        "type": "permission_decision",
        "request_id": request_id,
        "behavior": behavior,
        "agent_id": world.agent_id,
        "decided_by": world.owner_id,
    }


def item_count() -> int:
    return sum(1 for _ in Record.scan())


def test_replays_decided_ids_in_order_and_skips_the_rest(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    decided(world.agent_id, "r1", "allow")
    decided(world.agent_id, "r2", "deny")

    replay(gateway, socket, ["r2", "", "   ", "undecided", "r1", "r2", "r1"])

    assert sink.json_messages(socket) == [decision(world, "r2", "deny"), decision(world, "r1")]


def test_replay_reaches_every_session_of_the_agent(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    asking = connect_agent(gateway, sink, world, "a1=", session_id="s1")
    sibling = connect_agent(gateway, sink, world, "a2=", session_id="s2")
    decided(world.agent_id, "r1")

    replay(gateway, asking, ["r1"])

    assert sink.json_messages(asking) == [decision(world, "r1")]
    assert sink.json_messages(sibling) == [decision(world, "r1")]


def test_foreign_ids_are_never_answered(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    stranger_agent = accounts.create_agent("theirs", world.stranger_id, CHANNEL_AGENT_MODEL)
    theirs = int(stranger_agent.user_id)
    mine = connect_agent(gateway, sink, world, "a1=")
    their_socket = connect_agent(
        gateway, sink, world, "b1=", agent_id=theirs, token=world.stranger_token
    )
    decided(theirs, "foreign", "allow")
    decided(theirs, "shared", "deny")
    decided(world.agent_id, "shared", "allow")

    replay(gateway, mine, ["foreign", "shared"])

    # Only this agent's own decision of "shared"; nothing of the other agent's,
    # and nothing reaches the other agent's stream either.
    assert sink.json_messages(mine) == [decision(world, "shared", "allow")]
    assert sink.messages(their_socket) == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"action": "replay_permissions", "request_ids": ["r1", 7]}, "invalid_request"),
        ({"action": "replay_permissions", "request_ids": ["r1", None]}, "invalid_request"),
        ({"action": "replay_permissions", "request_ids": ["r1", ["r2"]]}, "invalid_request"),
        ({"action": "replay_permissions", "request_ids": "r1"}, "invalid_request"),
        ({"action": "replay_permissions", "request_ids": {"r1": 1}}, "invalid_request"),
        ({"action": "replay_permissions"}, "invalid_request"),
        ({"action": "replay_permissions", "request_ids": ["x" * 300]}, "invalid_request"),
    ],
)
def test_bad_input_gets_an_error_on_the_socket_and_nothing_else(
    world: World, management: ManagementApi, body: dict[str, Any], code: str
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    decided(world.agent_id, "r1")
    before = item_count()

    answer = gateway.send(socket, body)

    assert answer["statusCode"] == 200
    [message] = sink.json_messages(socket)
    assert message["type"] == "error"
    assert message["error"] == code
    assert message["message"]
    assert item_count() == before


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '"replay_permissions"', ""])
def test_a_frame_that_is_not_a_json_object_is_refused(
    world: World, management: ManagementApi, raw: str
) -> None:
    # API Gateway routes by the action it finds; a frame it routed to replay may
    # still fail to parse here (the function is also invoked directly).
    from agent_channel_dev.local.apigw_events import route_event
    from tests.support.gateway import invoke

    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    event = route_event("replay_permissions", socket, authorizer=gateway.contexts[socket], body=raw)

    answer = invoke("replay", event)

    assert answer["statusCode"] == 200
    [message] = sink.json_messages(socket)
    assert message["type"] == "error"
    assert message["error"] == "invalid_request"


def test_too_many_ids_is_an_error_but_duplicates_do_not_count(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    limit = settings().max_replay_ids
    decided(world.agent_id, "r0")

    replay(gateway, socket, [f"r{i}" for i in range(limit + 1)])
    [error] = sink.json_messages(socket)
    assert error["error"] == "too_many_request_ids"

    replay(gateway, socket, ["r0"] * (limit + 50) + [f"r{i}" for i in range(1, limit)])
    assert sink.json_messages(socket)[1:] == [decision(world, "r0")]


def test_many_ids_are_replayed_over_frames_of_at_most_the_limit(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    ids = [f"req-{i:03d}" for i in range(250)]
    for request_id in ids[::2]:  # every other one decided
        decided(world.agent_id, request_id, "deny")

    # A frame holds at most MAX_REPLAY_IDS ids: one BatchGetItem of 100 keys.
    limit = settings().max_replay_ids
    assert limit <= BATCH_GET_LIMIT
    for start in range(0, len(ids), limit):
        replay(gateway, socket, ids[start : start + limit])

    assert [m["request_id"] for m in sink.json_messages(socket)] == ids[::2]


def test_replay_from_a_topic_stream_connection_is_refused(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    agent_socket = connect_agent(gateway, sink, world, "a1=")
    watcher = connect_topic(gateway, sink, world, "t1=")
    decided(world.agent_id, "r1")

    replay(gateway, watcher, ["r1"])

    [message] = sink.json_messages(watcher)
    assert message["type"] == "error"
    assert message["error"] == "not_subscribed"
    assert sink.messages(agent_socket) == []


def test_replay_from_a_non_channel_agent_is_refused(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    listener = connect_agent(gateway, sink, world, "l1=", agent_id=world.other_ai_id)
    decided(world.other_ai_id, "r1")

    replay(gateway, listener, ["r1"])

    [message] = sink.json_messages(listener)
    assert message["error"] == "not_subscribed"


def test_replay_after_the_connection_was_removed_is_refused(
    world: World, management: ManagementApi
) -> None:
    # A replay frame racing its own $disconnect: the authorizer context still
    # says channel_agent, but the connection item is gone.
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    sibling = connect_agent(gateway, sink, world, "a2=", session_id="s2")
    decided(world.agent_id, "r1")
    wiring.presence_store().drop_connection(socket, f"agent:user:{world.agent_id}")

    replay(gateway, socket, ["r1"])

    [message] = sink.json_messages(socket)
    assert message["error"] == "not_subscribed"
    assert sink.messages(sibling) == []


def test_decision_made_during_an_outage_is_delivered_by_the_next_replay(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    gateway, sink = Gateway(), management.sink
    before = connect_agent(gateway, sink, world, "a1=")
    gateway.disconnect(before)
    sink.hang_up(before)

    pushed = decisions.decide(
        wiring.decision_store(),
        agent_id=world.agent_id,
        request_id="r-outage",
        behavior="deny",
        decided_by=world.owner_id,
        client=management.client,
        on_gone=wiring.gone_handler(),
    )
    assert pushed.broadcast.delivered == ()
    fake_clock.advance(90 * 24 * 3600)  # a long outage: no time window applies

    after = connect_agent(gateway, sink, world, "a2=")
    replay(gateway, after, ["r-outage", "r-other"])

    assert sink.json_messages(after) == [decision(world, "r-outage", "deny")]
    # Replaying again is harmless: the plugin drops ids it no longer holds.
    replay(gateway, after, ["r-outage"])
    assert len(sink.json_messages(after)) == 2


def test_empty_replay_sends_nothing(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    replay(gateway, socket, [])
    replay(gateway, socket, ["", " "])
    assert sink.messages(socket) == []


# $default


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (json.dumps({"action": "dance"}), "unknown_action"),
        (json.dumps({"hello": 1}), "missing_action"),
        ("not json at all", "invalid_json"),
        ("[1, 2, 3]", "invalid_json"),
    ],
)
def test_default_route_answers_with_an_error(
    world: World, management: ManagementApi, raw: str, code: str
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    before = item_count()

    answer = gateway.send(socket, raw)

    assert answer["statusCode"] == 200
    [message] = sink.json_messages(socket)
    assert message["type"] == "error"
    assert message["error"] == code
    assert item_count() == before


def test_ids_are_normalized_strings_only_blanks_dropped_duplicates_removed_order_kept() -> None:
    raw = ["b", "", "a", "  ", "b", "\t", "c", "a"]
    assert decisions.normalize_request_ids(raw, limit=3) == ["b", "a", "c"]
    # Blanks and duplicates do not count toward the bound.
    assert decisions.normalize_request_ids(["x", "", "x", " "] * 10, limit=1) == ["x"]
    with pytest.raises(decisions.TooManyIds):
        decisions.normalize_request_ids(["a", "b"], limit=1)
    with pytest.raises(decisions.BadReplayRequest):
        decisions.normalize_request_ids(["a", 1], limit=5)
    with pytest.raises(decisions.BadReplayRequest):
        decisions.normalize_request_ids(["a", True], limit=5)


def test_replay_carries_the_reason_and_the_decider(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    decisions.record_decision(
        wiring.decision_store(),
        agent_id=world.agent_id,
        request_id="r-why",
        behavior="deny",
        decided_by=world.owner_id,
        reason="use the staging copy",
    )

    replay(gateway, socket, ["r-why"])

    assert sink.json_messages(socket) == [
        {**decision(world, "r-why", "deny"), "reason": "use the staging copy"}
    ]
