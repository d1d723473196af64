"""The backend Lambda function: JSON commands in, {"ok": ...} out, never a raise."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_channel.backend import admin_commands, delivery_commands, router
from agent_channel.tasks.dynamodb import DynamoTaskStore
from agent_channel_dev import backend_transport
from agent_channel_dev.instruments.lambda_context import LocalContext
from tests.support import management_server
from tests.support.fixtures import World
from tests.support.gateway import Gateway
from tests.support.management_server import (
    ManagementApi,
    connect_agent,
    connect_topic,
)

tasks = DynamoTaskStore()

# The shared ``aws`` fixture, overridden so that local URLs pass through moto, and
# the running @connections server.
aws = management_server.aws
management = management_server.management


def invoke(command: Any) -> dict[str, Any]:
    from functions.backend import app

    result = app.handler(command, LocalContext(function_name="backend"))
    # What a non-Python backend receives: it must survive a JSON round trip.
    decoded: dict[str, Any] = json.loads(json.dumps(result))
    return decoded


def running_task_id(world: World) -> int:
    task = tasks.create(
        topic_id=world.topic_id, agent_id=world.agent_id, content="hi", author_id=world.owner_id
    )
    return int(tasks.start(task).task_id)


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ({"op": "fly"}, "unknown_op"),
        ({}, "invalid_command"),
        ([], "invalid_command"),
        (None, "invalid_command"),
        ("not json", "invalid_command"),
        ({"op": "dispatch"}, "invalid_command"),
        ({"op": "dispatch", "task_id": "7"}, "invalid_command"),
        ({"op": "dispatch", "task_id": True}, "invalid_command"),
        ({"op": "dispatch", "task_id": -1}, "invalid_command"),
        ({"op": "dispatch", "task_id": 1, "comment": "hi"}, "invalid_command"),
        ({"op": "dispatch", "task_id": 1, "comment": {"id": "x"}}, "invalid_command"),
        ({"op": "claim_reply", "task_id": 1.5}, "invalid_command"),
        (
            {"op": "decide_permission", "agent_id": 1, "request_id": "r", "behavior": "maybe"},
            "invalid_command",
        ),
        ({"op": "broadcast", "payload": {}}, "invalid_command"),
        ({"op": "broadcast", "agent_id": 1, "topic_id": 1, "payload": {}}, "invalid_command"),
        ({"op": "broadcast", "agent_id": 1, "payload": [1]}, "invalid_command"),
    ],
)
def test_bad_commands_are_answered_not_raised(
    world: World, management: ManagementApi, command: Any, code: str
) -> None:
    answer = invoke(command)
    assert answer["ok"] is False
    assert answer["error"] == code
    assert isinstance(answer["message"], str)
    assert answer["message"]


def test_decide_permission_first_wins_and_strangers_are_refused(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    command = {
        "op": "decide_permission",
        "agent_id": world.agent_id,
        "request_id": "r1",
        "behavior": "allow",
        "decided_by": world.owner_id,
    }

    first = invoke(command)
    again = invoke({**command, "behavior": "deny"})
    stranger = invoke({**command, "request_id": "r2", "decided_by": world.stranger_id})

    assert first["ok"] is True
    assert first["behavior"] == "allow"
    assert first["decided_by"] == world.owner_id
    assert first["reason"] is None
    assert first["delivered"] == [socket]
    assert again == {
        "ok": False,
        "error": "already_decided",
        "message": again["message"],
    }
    assert "already decided" in again["message"]
    assert stranger["ok"] is False
    assert stranger["error"] == "forbidden"
    assert [m["behavior"] for m in sink.json_messages(socket)] == ["allow"]


def test_dispatch_and_claim_reply(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    watcher = connect_topic(gateway, sink, world, "t1=")
    task_id = running_task_id(world)

    dispatched = invoke(
        {"op": "dispatch", "task_id": task_id, "comment": {"creative_id": 3, "id": 12}}
    )
    assert dispatched["ok"] is True
    assert dispatched["status"] == "delegated"
    assert dispatched["agent_stream"]["delivered"] == [socket]
    assert dispatched["topic_stream"]["delivered"] == [watcher]
    [message] = sink.json_messages(socket)
    assert message["comment"]["creative_id"] == 3
    assert message["comment"]["id"] == 12

    claimed = invoke({"op": "claim_reply", "task_id": task_id, "agent_id": world.agent_id})
    twice = invoke({"op": "claim_reply", "task_id": task_id})
    assert claimed == {"ok": True, "op": "claim_reply", "task_id": task_id, "status": "done"}
    assert twice == {
        "ok": False,
        "error": "reply_duplicate",
        "message": twice["message"],
        "task_id": task_id,
        "status": "done",
    }


def test_a_reply_to_work_taken_away_says_so(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    connect_agent(gateway, sink, world, "a1=")
    task_id = running_task_id(world)
    assert invoke({"op": "dispatch", "task_id": task_id})["ok"]
    task = tasks.get(task_id)
    assert task is not None
    tasks.cancel_delegated(task)  # as a grace cancellation would

    answer = invoke({"op": "claim_reply", "task_id": task_id, "agent_id": world.agent_id})

    assert answer["ok"] is False
    assert answer["error"] == "reply_not_delegated"
    assert answer["status"] == "cancelled"
    assert answer["task_id"] == task_id


def test_dispatch_to_an_unroutable_agent_is_an_error(
    world: World, management: ManagementApi
) -> None:
    task_id = running_task_id(world)
    answer = invoke({"op": "dispatch", "task_id": task_id})
    assert answer["ok"] is False
    assert answer["error"] == "agent_not_routable"
    task = tasks.get(task_id)
    assert task is not None
    assert task.status == "running"


def test_broadcast_op_and_the_size_limit(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    watcher = connect_topic(gateway, sink, world, "t1=")
    sink.hang_up(watcher)

    to_agent = invoke({"op": "broadcast", "agent_id": world.agent_id, "payload": {"hi": 1}})
    to_topic = invoke({"op": "broadcast", "topic_id": world.topic_id, "payload": {"hi": 2}})
    too_big = invoke(
        {"op": "broadcast", "agent_id": world.agent_id, "payload": {"d": "x" * 140_000}}
    )

    assert to_agent["ok"] is True
    assert to_agent["delivered"] == [socket]
    assert to_topic["ok"] is True
    assert to_topic["gone"] == [watcher]
    assert too_big["ok"] is False
    assert too_big["error"] == "payload_too_large"
    assert sink.json_messages(socket) == [{"hi": 1}]


def test_a_json_string_command_is_accepted(world: World, management: ManagementApi) -> None:
    answer = invoke(json.dumps({"op": "claim_reply", "task_id": 99}))
    assert answer["ok"] is False
    assert answer["error"] == "task_not_found"


def test_an_unexpected_failure_is_an_answer_not_a_raise(
    world: World, management: ManagementApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exploding(args: router.Args, context: router.CommandContext) -> dict[str, Any]:
        raise RuntimeError("storage is on fire")

    monkeypatch.setitem(
        delivery_commands.REGISTRY.ops, "explode", router.Op("explode", "test", exploding)
    )

    answer = invoke({"op": "explode"})

    assert answer == {"ok": False, "error": "internal_error", "message": "internal error"}


def test_new_ops_plug_into_a_registry(world: World, management: ManagementApi) -> None:
    # What a new op does: join an op set, validate through Args, answer.
    ops = router.OpSet()

    @ops.op("echo", "repeat a number")
    def echo(args: router.Args, context: router.CommandContext) -> dict[str, Any]:
        return {"n": args.integer("n")}

    registry = router.Registry("test", ops)
    assert registry.execute({"op": "echo", "n": 4}) == {"ok": True, "op": "echo", "n": 4}
    assert registry.execute({"op": "echo", "n": "4"})["error"] == "invalid_command"
    with pytest.raises(ValueError, match="already registered"):
        ops.op("echo", "again")(echo)
    with pytest.raises(ValueError, match="already registered"):
        router.Registry("twice", ops, ops)


def test_each_function_serves_its_own_ops_only(world: World, management: ManagementApi) -> None:
    delivery = set(delivery_commands.REGISTRY.ops)
    admin = set(admin_commands.REGISTRY.ops)
    assert delivery == {
        "dispatch",
        "decide_permission",
        "claim_reply",
        "broadcast",
        "create_task",
        "list_tasks",
        "presence",
        "unregister_agent",
    }
    assert admin == {"create_user", "create_agent", "create_topic", "issue_token", "revoke_token"}
    # The command line routes by the same names.
    assert admin == backend_transport.ADMIN_OPS
    # A delivery backend cannot mint a token: the op is unknown there.
    refused = invoke({"op": "issue_token", "user_id": world.owner_id})
    assert refused["ok"] is False
    assert refused["error"] == "unknown_op"


def test_decide_permission_takes_a_reason(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")

    answer = invoke(
        {
            "op": "decide_permission",
            "agent_id": world.agent_id,
            "request_id": "r1",
            "behavior": "deny",
            "decided_by": world.owner_id,
            "reason": "too broad",
        }
    )
    bad = invoke(
        {
            "op": "decide_permission",
            "agent_id": world.agent_id,
            "request_id": "r2",
            "behavior": "deny",
            "decided_by": world.owner_id,
            "reason": 7,
        }
    )

    assert answer["ok"] is True
    assert answer["reason"] == "too broad"
    assert sink.json_messages(socket)[0]["reason"] == "too broad"
    assert bad["ok"] is False
    assert bad["error"] == "invalid_command"
