"""Idempotent backend commands (Powertools' Idempotency utility over its DynamoDB
persistence layer, in moto): the same command twice, and twice at once, takes
effect once and answers the same."""

from __future__ import annotations

import json
import os
from typing import Any

import boto3
import pytest

from agent_channel.backend import idempotency
from agent_channel.storage.records import Record, TaskRecord
from agent_channel_dev.instruments.lambda_context import LocalContext
from tests.support.fixtures import World
from tests.support.interleave import random_chooser, run_once


def backend(command: Any) -> dict[str, Any]:
    from functions.backend import app

    answer: dict[str, Any] = json.loads(
        json.dumps(app.handler(command, LocalContext(function_name="backend")))
    )
    return answer


def admin(command: Any) -> dict[str, Any]:
    from functions.admin import app

    answer: dict[str, Any] = app.handler(command, LocalContext(function_name="admin"))
    return answer


def task_ids() -> list[int]:
    return sorted(int(r.task_id) for r in Record.scan() if isinstance(r, TaskRecord))


def create_task(world: World, key: str | None, content: str = "review it") -> dict[str, Any]:
    command: dict[str, Any] = {
        "op": "create_task",
        "agent_id": world.agent_id,
        "topic_id": world.topic_id,
        "content": content,
        "start": True,
    }
    if key is not None:
        command["idempotency_key"] = key
    return command


def test_the_same_command_twice_creates_one_task_and_answers_the_same(world: World) -> None:
    first = backend(create_task(world, "attempt-1"))
    again = backend(create_task(world, "attempt-1"))

    assert first["ok"] is True, first
    assert again == first
    assert task_ids() == [first["task_id"]]
    # A new attempt (a new key) is a new task; no key at all is one too.
    other = backend(create_task(world, "attempt-2"))
    plain = backend(create_task(world, None))
    assert len({first["task_id"], other["task_id"], plain["task_id"]}) == 3
    assert len(task_ids()) == 3


def test_the_answer_is_kept_in_the_idempotency_table_with_an_expiry(world: World) -> None:
    backend(create_task(world, "attempt-1"))
    table = boto3.client("dynamodb").scan(TableName=os.environ[idempotency.TABLE_ENV])
    [item] = table["Items"]
    assert item["status"]["S"] == "COMPLETED"
    assert int(item["expiration"]["N"]) > 0
    assert "attempt-1" not in json.dumps(item), "the key is stored hashed"


def test_a_refusal_is_an_answer_and_is_replayed(world: World) -> None:
    dispatch = {"op": "dispatch", "task_id": 4242, "idempotency_key": "d-1"}
    first = backend(dispatch)
    assert first["ok"] is False
    assert backend(dispatch) == first


def test_a_key_reused_for_another_command_is_refused_and_writes_nothing(world: World) -> None:
    first = backend(create_task(world, "attempt-1", content="one"))
    reused = backend(create_task(world, "attempt-1", content="two"))

    assert reused["ok"] is False
    assert reused["error"] == "idempotency_key_reused"
    assert task_ids() == [first["task_id"]]


def test_admin_commands_are_idempotent_too_but_never_a_token(world: World) -> None:
    made = admin({"op": "create_user", "name": "grace", "idempotency_key": "u-1"})
    assert admin({"op": "create_user", "name": "grace", "idempotency_key": "u-1"}) == made
    refused = admin({"op": "issue_token", "user_id": made["user_id"], "idempotency_key": "t-1"})
    assert refused["ok"] is False
    assert refused["error"] == "idempotency_not_supported"


def test_a_bad_key_is_refused(world: World) -> None:
    for key in (7, "x" * (idempotency.MAX_KEY_LENGTH + 1)):
        answer = backend({**create_task(world, None), "idempotency_key": key})
        assert answer["error"] == "invalid_command", answer
    assert task_ids() == []


@pytest.mark.parametrize("seed", range(10))
def test_the_same_command_at_once_creates_one_task_and_both_answer_the_same(
    world: World, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one waiting for its twin's answer polls; no need to pause long here.
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.001)
    command = create_task(world, f"attempt-{seed}")

    run = run_once(
        [("first", lambda: backend(command)), ("second", lambda: backend(command))],
        random_chooser(seed),
    )

    first, second = run.results["first"], run.results["second"]
    assert first["ok"] is True, first
    assert second == first
    assert task_ids() == [first["task_id"]]
