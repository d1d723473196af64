"""Security: revoked tokens, foreign agents, topics and request ids, conflicting
tokens, and tokens kept out of every log line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_channel.config import CHANNEL_AGENT_MODEL
from agent_channel.identity import accounts
from agent_channel.storage import schema
from agent_channel.storage.records import DecisionRecord
from agent_channel.tasks.dynamodb import DynamoTaskStore
from agent_channel_dev.instruments.lambda_context import LocalContext
from agent_channel_dev.instruments.request_counter import counting_requests
from tests.support import management_server
from tests.support.fixtures import World
from tests.support.gateway import Gateway
from tests.support.logs import captured_log_lines
from tests.support.management_server import ManagementApi, connect_agent, connect_topic

tasks = DynamoTaskStore()

aws = management_server.aws
management = management_server.management

READS = {"BatchGetItem", "GetItem", "Query"}


def backend(command: dict[str, Any]) -> dict[str, Any]:
    from functions.backend import app

    answer: dict[str, Any] = app.handler(command, LocalContext(function_name="backend"))
    return answer


def admin(command: dict[str, Any]) -> dict[str, Any]:
    from functions.admin import app

    answer: dict[str, Any] = app.handler(command, LocalContext(function_name="admin"))
    return answer


def stranger_agent(world: World) -> int:
    """A channel agent of the stranger's own."""
    return int(accounts.create_agent("mallory-bot", world.stranger_id, CHANNEL_AGENT_MODEL).user_id)


def decide(agent_id: int, request_id: str, by: int) -> dict[str, Any]:
    return backend(
        {
            "op": "decide_permission",
            "agent_id": agent_id,
            "request_id": request_id,
            "behavior": "allow",
            "decided_by": by,
        }
    )


def replay(gateway: Gateway, connection_id: str, request_ids: list[str]) -> None:
    gateway.send(connection_id, {"action": "replay_permissions", "request_ids": request_ids})


# -- tokens ------------------------------------------------------------------------------


def test_a_revoked_token_is_refused_and_stays_refused(world: World) -> None:
    gateway = Gateway()
    query = {"agent_id": str(world.agent_id), "session_id": "s1"}
    assert gateway.connect(query, token=world.owner_token).status == 200

    assert admin({"op": "revoke_token", "token": world.owner_token}) == {
        "ok": True,
        "op": "revoke_token",
        "revoked": True,
        "closed": 1,
        "not_closed": 0,
    }
    for how in ({"token": world.owner_token}, {"header_token": world.owner_token}):
        with counting_requests() as counter:
            assert gateway.connect(query, **how).status == 401
        assert set(counter.of("dynamodb")) <= READS, "a refusal writes nothing"
    # Revoking twice is not a way back, and a new token is a new secret.
    assert not accounts.revoke_token(world.owner_token)
    assert gateway.connect(query, token=world.owner_token).status == 401
    fresh = accounts.issue_token(world.owner_id)
    assert fresh != world.owner_token
    assert gateway.connect(query, token=fresh).status == 200


@pytest.mark.parametrize(
    ("header", "query_token", "status"),
    [
        ("Bearer OWNER", "STRANGER", 401),
        ("Bearer STRANGER", "OWNER", 401),
        ("Bearer OWNER", "OWNER", 200),
        ("Basic OWNER", None, 401),
        ("Bearer", "OWNER", 401),
        ("OWNER", None, 401),
        ("Bearer OWNER", "OWNER ", 401),
        ("bearer OWNER", None, 200),
    ],
)
def test_header_and_query_tokens_that_disagree_are_refused(
    world: World, header: str, query_token: str | None, status: int
) -> None:
    tokens = {"OWNER": world.owner_token, "STRANGER": world.stranger_token}

    def real(text: str) -> str:
        for name, value in tokens.items():
            text = text.replace(name, value)
        return text

    from agent_channel_dev.local.apigw_events import authorizer_event
    from tests.support.gateway import invoke

    query = {"agent_id": str(world.agent_id)}
    if query_token is not None:
        query["token"] = real(query_token)
    event = authorizer_event("c1=", headers={"Authorization": real(header)}, query=query)
    try:
        policy = invoke("authorize", event)
        answer = 200 if policy["policyDocument"]["Statement"][0]["Effect"] == "Allow" else 403
    except PermissionError:
        answer = 401
    assert answer == status


# -- another user's agent, topic and request ids ---------------------------------------------


def test_another_users_agent_and_topic_are_forbidden(world: World) -> None:
    gateway = Gateway()
    mine = stranger_agent(world)
    for query in (
        {"agent_id": str(world.agent_id)},
        {"agent_id": str(world.other_ai_id)},
        {"topic_id": str(world.topic_id)},
    ):
        with counting_requests() as counter:
            assert gateway.connect(query, token=world.stranger_token).status == 403
        assert set(counter.of("dynamodb")) <= READS
    # And the owner cannot take the stranger's agent either.
    assert gateway.connect({"agent_id": str(mine)}, token=world.owner_token).status == 403


def test_replay_of_foreign_request_ids_sends_nothing(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    assert decide(world.agent_id, "owners-request", world.owner_id)["ok"]
    mine = stranger_agent(world)
    owner_socket = connect_agent(gateway, sink, world, "owner=")
    stranger_socket = connect_agent(
        gateway, sink, world, "stranger=", agent_id=mine, token=world.stranger_token
    )

    replay(gateway, stranger_socket, ["owners-request", "r-unknown"])

    assert sink.messages(stranger_socket) == [], "another agent's decision was sent"
    assert sink.messages(owner_socket) == [], "a stranger's replay reached the owner"
    # The owner's own replay still gets it: the decision is intact.
    replay(gateway, owner_socket, ["owners-request"])
    [message] = sink.json_messages(owner_socket)
    assert message["request_id"] == "owners-request"
    assert message["agent_id"] == world.agent_id


def test_only_a_channel_agents_own_socket_may_replay(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    assert decide(world.agent_id, "r1", world.owner_id)["ok"]
    watcher = connect_topic(gateway, sink, world, "topic=")
    listener = connect_agent(gateway, sink, world, "listener=", agent_id=world.other_ai_id)

    for socket in (watcher, listener):
        replay(gateway, socket, ["r1"])
        [message] = sink.json_messages(socket)
        assert message["type"] == "error", message
        assert "r1" not in json.dumps(message)


def test_deciding_for_another_users_agent_is_refused_and_writes_nothing(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    owner_socket = connect_agent(gateway, sink, world, "owner=")

    answer = decide(world.agent_id, "r1", world.stranger_id)

    assert answer["ok"] is False and answer["error"] == "forbidden", answer
    with pytest.raises(DecisionRecord.DoesNotExist):
        DecisionRecord.get(*schema.decision_key(world.agent_id, "r1"), consistent_read=True)
    assert sink.messages(owner_socket) == []
    # A missing agent gets the same answer: nothing is revealed.
    missing = decide(999_999, "r1", world.stranger_id)
    assert missing["error"] == answer["error"] and missing["message"].startswith("agent ")
    # The owner's decision, later, is the first and only one.
    assert decide(world.agent_id, "r1", world.owner_id)["ok"]


def test_a_reply_claimed_for_another_agent_is_refused(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    mine = stranger_agent(world)
    connect_agent(gateway, sink, world, "owner=")
    connect_agent(gateway, sink, world, "stranger=", agent_id=mine, token=world.stranger_token)
    task = tasks.start(
        tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="secret plan")
    )
    assert backend({"op": "dispatch", "task_id": int(task.task_id)})["ok"]

    stolen = backend({"op": "claim_reply", "task_id": int(task.task_id), "agent_id": mine})

    assert stolen["ok"] is False and stolen["error"] == "task_not_found", stolen
    assert tasks.get(int(task.task_id)).status == "delegated"  # type: ignore[union-attr]
    # The dispatch reached the owner's agent only.
    assert sink.messages("stranger=") == []
    assert [m["type"] for m in sink.json_messages("owner=")] == ["dispatch"]


# -- tokens never logged ---------------------------------------------------------------------


def test_a_token_is_never_logged(
    world: World, management: ManagementApi, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, sink = Gateway(), management.sink
    forged = "act_" + "Z" * 43
    secrets = [world.owner_token, world.stranger_token, forged]
    capsys.readouterr()
    with captured_log_lines() as lines:
        socket = connect_agent(gateway, sink, world, "a1=", session_id="s1")
        gateway.send(socket, {"action": "heartbeat"})
        replay(gateway, socket, ["r1"])
        gateway.send(socket, {"action": "nope", "token": world.owner_token})
        gateway.disconnect(socket)
        # Failed authorizations: forged, conflicting, revoked, malformed scheme.
        query = {"agent_id": str(world.agent_id)}
        assert gateway.connect(query, token=forged).status == 401
        assert (
            gateway.connect(query, token=world.owner_token, header_token=world.stranger_token)
        ).status == 401
        assert (
            gateway.connect({"agent_id": str(world.agent_id)}, token=world.stranger_token).status
            == 403
        )
        assert accounts.revoke_token(world.owner_token)
        assert gateway.connect(query, token=world.owner_token).status == 401
    printed = capsys.readouterr()
    logged = json.dumps(lines) + printed.out + printed.err
    assert len(lines) >= 6, "the routes did log"
    for secret in secrets:
        assert secret not in logged
        assert secret.removeprefix("act_") not in logged


# -- a revoked token keeps no access on a socket it opened ---------------------------------


def test_revoking_a_token_closes_every_socket_opened_with_it(
    world: World, management: ManagementApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    from agent_channel.backend import admin_ops

    closer = boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=management.server.endpoint_url(management_server.STAGE),
    )
    monkeypatch.setattr(admin_ops, "connection_closer", lambda: closer)
    gateway, sink = Gateway(), management.sink
    agent_socket = connect_agent(gateway, sink, world, "rev-agent=", session_id="s1")
    topic_socket = connect_topic(gateway, sink, world, "rev-topic=")
    other_token = accounts.issue_token(world.owner_id)
    kept = connect_agent(gateway, sink, world, "kept=", token=other_token, session_id="s2")

    answer = admin({"op": "revoke_token", "token": world.owner_token})

    assert answer == {
        "ok": True,
        "op": "revoke_token",
        "revoked": True,
        "closed": 2,
        "not_closed": 0,
    }
    assert not sink.is_open(agent_socket), "the revoked token's agent socket is still open"
    assert not sink.is_open(topic_socket), "the revoked token's topic socket is still open"
    assert sink.is_open(kept), "a socket opened with another token was closed"


def test_a_heartbeat_on_a_revoked_tokens_socket_restores_nothing(
    world: World, fake_clock: Any
) -> None:
    """Even if the socket outlives the revocation (its close failed, its $disconnect
    is lost), once its lease is reaped no heartbeat brings routing back."""
    from agent_channel.config import settings
    from agent_channel.lambda_kit import wiring
    from agent_channel_dev.local.apigw_events import scheduled_event
    from tests.support.gateway import invoke

    gateway = Gateway()
    query = {"agent_id": str(world.agent_id), "session_id": "s1"}
    socket = gateway.connect(query, token=world.owner_token).connection_id
    assert accounts.revoke_token(world.owner_token)
    fake_clock.advance(settings().stale_after_seconds + 1)
    invoke("sweeper", scheduled_event())
    presence = wiring.presence_store().read(world.agent_id)
    assert presence is not None and not presence.routing_on and not presence.leases

    gateway.send(socket, {"action": "heartbeat"})

    presence = wiring.presence_store().read(world.agent_id)
    assert presence is not None
    assert not presence.routing_on, "a heartbeat with a revoked token restored routing"
    assert not presence.leases


def test_a_heartbeat_after_the_agent_changed_hands_restores_nothing(
    world: World, fake_clock: Any
) -> None:
    from agent_channel.config import settings
    from agent_channel.lambda_kit import wiring
    from agent_channel.storage.records import UserRecord
    from agent_channel_dev.local.apigw_events import scheduled_event
    from tests.support.gateway import invoke

    gateway = Gateway()
    query = {"agent_id": str(world.agent_id), "session_id": "s1"}
    socket = gateway.connect(query, token=world.owner_token).connection_id
    UserRecord(*schema.user_key(world.agent_id)).update(
        actions=[UserRecord.created_by.set(world.stranger_id)]
    )
    fake_clock.advance(settings().stale_after_seconds + 1)
    invoke("sweeper", scheduled_event())

    gateway.send(socket, {"action": "heartbeat"})

    presence = wiring.presence_store().read(world.agent_id)
    assert presence is not None and not presence.routing_on and not presence.leases


# -- what changed between the authorizer and $connect is caught by $connect ---------------


def _authorized_then(world: World, query: dict[str, str], change: Any) -> int:
    """Run the authorizer, apply ``change`` (what another request did meanwhile),
    then $connect with the context the authorizer returned; $connect's status."""
    from agent_channel_dev.local.apigw_events import (
        authorizer_context_for_routes,
        authorizer_event,
        route_event,
    )
    from tests.support.gateway import AUTHORIZER_FUNCTION, ROUTE_FUNCTIONS, invoke

    full = {**query, "token": world.owner_token}
    policy = invoke(AUTHORIZER_FUNCTION, authorizer_event("late=", query=full))
    assert policy["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    change()
    context = authorizer_context_for_routes(policy)
    event = route_event("$connect", "late=", authorizer=context, query=full)
    result: int = invoke(ROUTE_FUNCTIONS["$connect"], event)["statusCode"]
    return result


def _connection_exists(connection_id: str) -> bool:
    from agent_channel.storage.records import ConnectionRecord

    try:
        ConnectionRecord.get(*schema.connection_key(connection_id), consistent_read=True)
    except ConnectionRecord.DoesNotExist:
        return False
    return True


def test_an_agent_handed_over_after_the_authorizer_is_not_subscribed(world: World) -> None:
    from agent_channel.storage.records import UserRecord

    def hand_over() -> None:
        UserRecord(*schema.user_key(world.agent_id)).update(
            actions=[UserRecord.created_by.set(world.stranger_id)]
        )

    query = {"agent_id": str(world.agent_id), "session_id": "s1"}
    assert _authorized_then(world, query, hand_over) == 403
    assert not _connection_exists("late=")


def test_a_listened_agent_handed_over_after_the_authorizer_is_not_attached(
    world: World,
) -> None:
    from agent_channel.storage.records import UserRecord

    def hand_over() -> None:
        UserRecord(*schema.user_key(world.other_ai_id)).update(
            actions=[UserRecord.created_by.set(world.stranger_id)]
        )

    assert _authorized_then(world, {"agent_id": str(world.other_ai_id)}, hand_over) == 403
    assert not _connection_exists("late=")


def test_a_topic_withdrawn_after_the_authorizer_is_not_attached(world: World) -> None:
    from agent_channel.storage.records import TopicRecord

    def withdraw() -> None:
        TopicRecord(*schema.topic_key(world.topic_id)).update(
            actions=[TopicRecord.owner_id.set(world.stranger_id)]
        )

    assert _authorized_then(world, {"topic_id": str(world.topic_id)}, withdraw) == 403
    assert not _connection_exists("late=")


@pytest.mark.parametrize("target", ["agent", "topic"])
def test_a_token_revoked_after_the_authorizer_opens_nothing(world: World, target: str) -> None:
    query = (
        {"agent_id": str(world.agent_id), "session_id": "s1"}
        if target == "agent"
        else {"topic_id": str(world.topic_id)}
    )
    assert _authorized_then(world, query, lambda: accounts.revoke_token(world.owner_token)) == 403
    assert not _connection_exists("late=")
    assert accounts.sockets_opened_with(world.owner_token) == []


def test_a_task_is_never_overwritten_even_if_the_counter_repeats(world: World) -> None:
    from pynamodb.exceptions import PutError

    from agent_channel.storage.records import CounterRecord

    first = tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="first")
    CounterRecord(*schema.counter_key("task")).update(actions=[CounterRecord.value.set(0)])
    with pytest.raises(PutError):
        tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="second")
    kept = tasks.get(first.task_id)
    assert kept is not None and kept.content == "first"


# -- acting users --------------------------------------------------------------------


def all_items() -> list[str]:
    import boto3

    from agent_channel.storage.records import Record

    items = boto3.client("dynamodb").scan(TableName=Record.Meta.table_name)["Items"]
    return sorted(json.dumps(item, sort_keys=True) for item in items)


def test_dispatch_for_an_acting_user_who_cannot_read_the_topic_is_refused(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "c1=")
    task = tasks.start(tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="x"))
    before = all_items()

    for acting in (world.stranger_id, world.stranger_id + 1000):
        answer = backend({"op": "dispatch", "task_id": task.task_id, "acting_user_id": acting})
        assert answer["ok"] is False and answer["error"] == "forbidden", answer
    # A missing task gets the same answer as a foreign one.
    missing = backend({"op": "dispatch", "task_id": 987654, "acting_user_id": world.stranger_id})
    assert missing["error"] == "forbidden"
    assert all_items() == before, "a refusal writes nothing"
    assert sink.json_messages(socket) == []

    allowed = backend({"op": "dispatch", "task_id": task.task_id, "acting_user_id": world.owner_id})
    assert allowed["ok"] is True and allowed["status"] == "delegated", allowed


def test_a_decision_for_an_acting_user_is_theirs_and_for_their_agent_only(
    world: World, management: ManagementApi
) -> None:
    base = {"op": "decide_permission", "agent_id": world.agent_id, "behavior": "allow"}
    before = all_items()

    foreign = backend({**base, "request_id": "r1", "acting_user_id": world.stranger_id})
    assert foreign["ok"] is False and foreign["error"] == "forbidden", foreign
    posing = backend(
        {
            **base,
            "request_id": "r1",
            "acting_user_id": world.owner_id,
            "decided_by": world.stranger_id,
        }
    )
    assert posing["ok"] is False and posing["error"] == "invalid_command", posing
    assert all_items() == before

    mine = backend({**base, "request_id": "r1", "acting_user_id": world.owner_id})
    assert mine["ok"] is True and mine["decided_by"] == world.owner_id, mine


def test_the_admin_function_serves_accounts_and_not_delivery(world: World) -> None:
    made = admin({"op": "create_user", "name": "grace"})
    assert made["ok"] is True
    token = admin({"op": "issue_token", "user_id": made["user_id"]})
    assert token["ok"] is True and token["token"]
    assert admin({"op": "dispatch", "task_id": 1})["error"] == "unknown_op"
    assert backend({"op": "create_user", "name": "eve"})["error"] == "unknown_op"
