"""A fan-out's posts are in its trace: the posts bypass botocore, so X-Ray's
botocore patch does not see them, and fan-out records them itself (one
subsegment per fan-out, one per post up to a cap) whenever tracing is on.

Run with a real X-Ray SDK recorder whose emitter keeps the documents in memory
(the Tracer is disabled outside Lambda)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aws_xray_sdk import global_sdk_config
from aws_xray_sdk.core.recorder import AWSXRayRecorder

from agent_channel import observability
from agent_channel.delivery import fanout
from agent_channel.delivery.fanout import TRACED_IDS, TRACED_POSTS, deliver
from tests.support import management_server
from tests.support.management_server import ManagementApi

aws = management_server.aws
management = management_server.management


class MemoryEmitter:
    """What the recorder would send to the daemon, kept."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_entity(self, entity: Any) -> None:
        self.sent.append(entity.to_dict())

    def set_daemon_address(self, address: str | None) -> None:
        pass


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    # The disabled Tracer turns the SDK off process-wide: on for this test only.
    enabled = global_sdk_config.sdk_enabled()
    global_sdk_config.set_sdk_enabled(True)
    emitter = MemoryEmitter()
    recorder = AWSXRayRecorder()
    # No streaming: the whole tree arrives as one document, to be read back.
    recorder.configure(
        emitter=emitter, sampling=False, context_missing="LOG_ERROR", streaming_threshold=10**6
    )
    monkeypatch.setattr(observability, "_recorder", lambda: recorder)
    recorder.begin_segment("backend")
    yield emitter.sent
    recorder.clear_trace_entities()
    global_sdk_config.set_sdk_enabled(enabled)


def subsegments(entity: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = [sub for sub in entity.get("subsegments", []) if sub["name"] == name]
    for sub in entity.get("subsegments", []):
        found.extend(subsegments(sub, name))
    return found


def finished(emitted: list[dict[str, Any]]) -> dict[str, Any]:
    observability._recorder().end_segment()
    [segment] = emitted
    return segment


@pytest.mark.parametrize("workers", [1, 8])
def test_each_post_is_a_subsegment_of_the_fan_out(
    management: ManagementApi, emitted: list[dict[str, Any]], workers: int
) -> None:
    for index in range(5):
        management.sink.open(f"c{index}=")
    ids = [f"c{index}=" for index in range(6)]  # c5= is gone

    result = deliver(
        "agent:topic:1", ids, b"{}", client=management.client, workers=workers, on_gone=None
    )

    assert result.gone == ("c5=",)
    segment = finished(emitted)
    [section] = subsegments(segment, "fanout")
    assert section["annotations"] == {
        "stream": "agent:topic:1",
        "connections": 6,
        "delivered": 5,
        "gone": 1,
        "failed": 0,
        "throttle_retries": 0,
    }
    assert section["metadata"]["default"] == {"gone": ["c5="], "failed": []}
    posts = subsegments(section, "post_to_connection")
    assert sorted(p["annotations"]["connection_id"] for p in posts) == sorted(ids)
    outcomes = {p["annotations"]["connection_id"]: p["annotations"]["outcome"] for p in posts}
    assert outcomes["c5="] == "gone"
    assert outcomes["c0="] == "delivered"
    # Every post's subsegment lies within the fan-out's.
    assert all(section["start_time"] <= p["start_time"] <= p["end_time"] for p in posts)
    assert all(p["end_time"] <= section["end_time"] for p in posts)


def test_a_large_fan_out_traces_a_capped_number_of_posts(
    management: ManagementApi, emitted: list[dict[str, Any]]
) -> None:
    ids = [f"c{index}=" for index in range(TRACED_POSTS * 2 + TRACED_IDS)]
    for connection_id in ids[: TRACED_POSTS * 2]:
        management.sink.open(connection_id)

    deliver("agent:topic:1", ids, b"{}", client=management.client, workers=16, on_gone=None)

    segment = finished(emitted)
    [section] = subsegments(segment, "fanout")
    assert len(subsegments(section, "post_to_connection")) == TRACED_POSTS
    assert section["annotations"]["connections"] == len(ids)
    assert section["annotations"]["gone"] == TRACED_IDS
    assert len(section["metadata"]["default"]["gone"]) == TRACED_IDS


def test_nothing_is_traced_while_tracing_is_off(
    management: ManagementApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    sections: list[str] = []
    real = fanout.trace_section

    def spy(name: str) -> Any:
        sections.append(name)
        return real(name)

    monkeypatch.setattr(fanout, "trace_section", spy)
    management.sink.open("c0=")
    deliver("s", ["c0="], b"{}", client=management.client, workers=4, on_gone=None)
    # Asked once, answered "off": no post asks again.
    assert sections == ["fanout"]
