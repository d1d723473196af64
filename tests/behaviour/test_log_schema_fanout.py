"""One log schema across fan-out's pool threads: the lines and the AWS calls a
broadcast makes on its worker threads belong to the invocation that started it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from agent_channel import observability
from agent_channel_dev.instruments.lambda_context import LocalContext
from tests.support import management_server
from tests.support.fixtures import World
from tests.support.gateway import Gateway
from tests.support.logs import captured_log_lines
from tests.support.management_server import ManagementApi, connect_agent

aws = management_server.aws
management = management_server.management


def test_lines_logged_on_fanout_threads_carry_the_invocation(
    world: World, management: ManagementApi
) -> None:
    from functions.backend import app

    gateway, sink = Gateway(), management.sink
    gone = connect_agent(gateway, sink, world, "a1=", session_id="s1")
    alive = connect_agent(gateway, sink, world, "a2=", session_id="s2")
    sink.hang_up(gone)  # its cleanup (the $disconnect path) runs on a pool thread
    context = LocalContext(function_name="backend")

    with captured_log_lines() as lines:
        answer = app.handler(
            {"op": "broadcast", "agent_id": world.agent_id, "payload": {"n": 1}}, context
        )

    assert answer["ok"] is True and answer["gone"] == [gone], answer
    assert answer["delivered"] == [alive]
    assert lines, "the gone connection's cleanup logs"
    for line in lines:
        assert line["function_name"] == "backend", line
        assert line["function_request_id"] == context.aws_request_id, line


class FakeRecorder:
    """The X-Ray SDK's thread-local trace entity, as its recorder keeps it."""

    def __init__(self) -> None:
        self.local = threading.local()

    def get_trace_entity(self) -> Any:
        return getattr(self.local, "entity", None)

    def set_trace_entity(self, entity: Any) -> None:
        self.local.entity = entity

    def clear_trace_entities(self) -> None:
        self.local.entity = None


def test_work_on_pool_threads_joins_the_callers_trace_segment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = FakeRecorder()
    monkeypatch.setattr(observability, "_recorder", lambda: recorder)
    recorder.set_trace_entity("segment-of-the-invocation")

    with ThreadPoolExecutor(4) as pool:
        bare = list(pool.map(lambda _: recorder.get_trace_entity(), range(8)))
        carried = list(
            pool.map(
                observability.on_worker_threads(lambda _: recorder.get_trace_entity()), range(8)
            )
        )
        after = list(pool.map(lambda _: recorder.get_trace_entity(), range(8)))

    assert bare == [None] * 8, "a pool thread starts outside any segment"
    assert carried == ["segment-of-the-invocation"] * 8
    assert after == [None] * 8, "and is left outside it again"
