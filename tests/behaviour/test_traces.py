"""Traces: every handler runs inside the Powertools Tracer, and the connection,
agent and task ids are annotations, so one dispatch is found from the backend
command to the agent's connection."""

from __future__ import annotations

from typing import Any

import pytest

from agent_channel.observability import tracer
from agent_channel_dev.instruments.lambda_context import LocalContext
from tests.support import management_server
from tests.support.fixtures import World
from tests.support.gateway import Gateway
from tests.support.management_server import ManagementApi, connect_agent

aws = management_server.aws
management = management_server.management


@pytest.fixture
def annotations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """What reaches the Tracer (disabled outside Lambda, so recorded here)."""
    seen: list[tuple[str, Any]] = []
    monkeypatch.setattr(tracer(), "put_annotation", lambda key, value: seen.append((key, value)))
    return seen


def test_a_route_annotates_its_connection_and_agent(
    world: World, annotations: list[tuple[str, Any]]
) -> None:
    gateway = Gateway()
    query = {"agent_id": str(world.agent_id), "session_id": "s1"}
    connected = gateway.connect(query, token=world.owner_token)
    gateway.send(connected.connection_id, {"action": "heartbeat"})

    assert ("connection_id", connected.connection_id) in annotations
    assert ("agent_id", world.agent_id) in annotations


def test_a_dispatch_annotates_its_task_and_agent(
    world: World, management: ManagementApi, annotations: list[tuple[str, Any]]
) -> None:
    from functions.backend import app

    from agent_channel.tasks.dynamodb import DynamoTaskStore

    tasks = DynamoTaskStore()
    connect_agent(Gateway(), management.sink, world, "c1=")
    task = tasks.start(tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="x"))
    annotations.clear()

    answer = app.handler(
        {"op": "dispatch", "task_id": task.task_id}, LocalContext(function_name="backend")
    )

    assert answer["ok"] is True, answer
    assert ("task_id", task.task_id) in annotations
    assert ("agent_id", world.agent_id) in annotations


def test_the_tracer_patches_only_botocore_and_never_captures_responses() -> None:
    # issue_token's answer carries a token in clear: no response goes into a trace.
    from agent_channel.lambda_kit import invocation

    source = invocation.__file__
    with open(source, encoding="utf-8") as module:
        assert "capture_response=False" in module.read()
    assert tracer()._config["patch_modules"] == ("botocore",)  # type: ignore[attr-defined]
