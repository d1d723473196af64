"""Very large streams are split across invocations (delivery.split): the
broadcasting invocation posts the first slice, each other slice goes to an
asynchronous invocation of the fan-out worker (functions/fanout), and together
they post to every connection exactly once."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.core import config as moto_config

from agent_channel.config import API_GATEWAY_MESSAGE_LIMIT, settings
from agent_channel.delivery import broadcast, fanout, split
from agent_channel.delivery.broadcast import broadcast_to_topic
from agent_channel.delivery.streams import topic_stream
from agent_channel.lambda_kit import wiring
from agent_channel_dev.instruments.botocore_hooks import ApiCall, service_of, wrapping_api_calls
from agent_channel_dev.instruments.lambda_context import LocalContext
from tests.support import management_server
from tests.support.fixtures import World
from tests.support.gateway import Gateway
from tests.support.management_server import ManagementApi, connect_topic

aws = management_server.aws
management = management_server.management

MEMBERS = 3
TOPIC_SOCKETS = 7


@pytest.fixture
def handed() -> Iterator[list[bytes]]:
    """Install a splitter whose workers are recorded, not started."""
    payloads: list[bytes] = []
    broadcast.split_large_streams(split.Splitter(MEMBERS, payloads.append))
    yield payloads
    broadcast.split_large_streams(None)


@pytest.fixture
def worker(management: ManagementApi, monkeypatch: pytest.MonkeyPatch) -> Any:
    from functions.fanout import app

    monkeypatch.setattr(app, "management", management.client)
    return app


def topic_sockets(world: World, management: ManagementApi) -> list[str]:
    gateway = Gateway()
    return [
        connect_topic(gateway, management.sink, world, f"t{index}=")
        for index in range(TOPIC_SOCKETS)
    ]


# ---------------------------------------------------------------- the plan


def test_slices_cover_every_connection_once_in_order() -> None:
    ids = [f"c{index}=" for index in range(23)]
    for members in (1, 5, 23, 100):
        slices = split.plan(ids, b'{"m":1}', members)
        assert [i for piece in slices for i in piece] == ids
        assert all(1 <= len(piece) <= members for piece in slices)
        assert len(slices) == -(-len(ids) // members)


@pytest.mark.parametrize("character", ["é", "a", "\n"])
def test_each_worker_event_fits_an_asynchronous_invocation(character: str) -> None:
    # About the largest message API Gateway takes, and ids that would not all fit.
    data = fanout.encode({"m": character * (API_GATEWAY_MESSAGE_LIMIT // 2 - 10)})
    assert len(data) <= API_GATEWAY_MESSAGE_LIMIT
    ids = [f"L0SM9cOFvHcCIhw{index:05d}=" for index in range(20_000)]
    slices = split.plan(ids, data, 10_000)
    assert len(slices) > 2
    assert [i for piece in slices for i in piece] == ids
    for piece in slices:
        payload = json.dumps(
            split.slice_event("agent:topic:1", data, piece),
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        assert len(payload) <= split.EVENT_LIMIT


def test_a_message_too_large_to_travel_in_an_event_is_not_split() -> None:
    # Quotes, escaped twice over: a 128 KB message that weighs 256 KB in an event.
    data = fanout.encode({"m": '"' * (API_GATEWAY_MESSAGE_LIMIT // 2 - 10)})
    with pytest.raises(ValueError, match="no room"):
        split.plan(["a=", "b="], data, 1)


def test_a_slice_event_round_trips() -> None:
    data = '{"type":"task","text":"ü ✓"}'.encode()
    event = json.loads(json.dumps(split.slice_event("agent:topic:9", data, ["a=", "b="])))
    assert split.parse_slice(event) == split.Slice("agent:topic:9", data, ("a=", "b="))


@pytest.mark.parametrize(
    "event",
    [
        None,
        {},
        {"fanout_slice": []},
        {"fanout_slice": {"stream": "", "data": "{}", "connection_ids": ["a"]}},
        {"fanout_slice": {"stream": "s", "data": 1, "connection_ids": ["a"]}},
        {"fanout_slice": {"stream": "s", "data": "{}", "connection_ids": "a"}},
        {"fanout_slice": {"stream": "s", "data": "{}", "connection_ids": ["a", ""]}},
    ],
)
def test_a_malformed_slice_is_refused(event: Any) -> None:
    with pytest.raises(split.BadSlice):
        split.parse_slice(event)


# ---------------------------------------------------------------- broadcast and worker


def test_a_large_stream_is_posted_by_the_caller_and_its_workers_exactly_once(
    world: World, management: ManagementApi, handed: list[bytes], worker: Any
) -> None:
    sockets = topic_sockets(world, management)

    result = broadcast_to_topic(
        world.topic_id, {"type": "news"}, client=management.client, on_gone=None
    )

    # The caller posted the first slice; the rest went to workers.
    assert len(result.delivered) == MEMBERS
    assert result.handed_off == TOPIC_SOCKETS - MEMBERS
    assert result.as_dict()["handed_off"] == TOPIC_SOCKETS - MEMBERS
    events = [json.loads(payload) for payload in handed]
    assert [len(e["fanout_slice"]["connection_ids"]) for e in events] == [3, 1]
    for event in events:
        answer = worker.handler(event, LocalContext(function_name="fanout"))
        assert answer["ok"] is True
        assert answer["stream"] == topic_stream(world.topic_id)
    for socket in sockets:
        assert management.sink.messages(socket) == [b'{"type":"news"}'], socket


def test_a_stream_whose_message_cannot_travel_is_posted_in_place(
    world: World, management: ManagementApi, handed: list[bytes]
) -> None:
    topic_sockets(world, management)
    message = {"m": '"' * (API_GATEWAY_MESSAGE_LIMIT // 2 - 10)}

    result = broadcast_to_topic(world.topic_id, message, client=management.client, on_gone=None)

    assert len(result.delivered) == TOPIC_SOCKETS
    assert handed == []


def test_a_stream_at_the_bound_is_not_split(
    world: World, management: ManagementApi, handed: list[bytes]
) -> None:
    gateway = Gateway()
    for index in range(MEMBERS):
        connect_topic(gateway, management.sink, world, f"t{index}=")

    result = broadcast_to_topic(world.topic_id, {"n": 1}, client=management.client, on_gone=None)

    assert len(result.delivered) == MEMBERS
    assert result.handed_off == 0
    assert handed == []


def test_slices_whose_worker_cannot_start_are_posted_by_the_caller(
    world: World, management: ManagementApi
) -> None:
    sockets = topic_sockets(world, management)
    calls: list[bytes] = []

    def throttled(payload: bytes) -> object:
        calls.append(payload)
        if len(calls) == 1:
            raise RuntimeError("TooManyRequestsException")
        return None

    broadcast.split_large_streams(split.Splitter(MEMBERS, throttled))
    try:
        result = broadcast_to_topic(
            world.topic_id, {"n": 1}, client=management.client, on_gone=None
        )
    finally:
        broadcast.split_large_streams(None)

    # Slice 2 (t3..t5) could not be handed off: posted here with slice 1.
    assert set(result.delivered) == set(sockets[:6])
    assert result.handed_off == 1
    assert management.sink.messages(sockets[6]) == []


def test_a_worker_removes_gone_connections_of_its_slice(
    world: World, management: ManagementApi, worker: Any
) -> None:
    sockets = topic_sockets(world, management)
    management.sink.hang_up(sockets[1])
    removed: list[tuple[str, str]] = []
    worker_gone = worker.on_gone
    worker.on_gone = lambda connection_id, stream: removed.append((connection_id, stream))
    try:
        event = split.slice_event(topic_stream(world.topic_id), b'{"n":2}', sockets[:3])
        answer = worker.handler(event, LocalContext(function_name="fanout"))
    finally:
        worker.on_gone = worker_gone

    assert answer == {
        "ok": True,
        "stream": topic_stream(world.topic_id),
        "delivered": 2,
        "gone": 1,
        "failed": 0,
    }
    assert removed == [(sockets[1], topic_stream(world.topic_id))]


def test_a_malformed_worker_event_is_dropped(worker: Any) -> None:
    answer = worker.handler({"op": "dispatch"}, LocalContext(function_name="fanout"))
    assert answer == {"ok": False, "error": "bad_slice"}


# ---------------------------------------------------------------- through Lambda (moto)


@pytest.fixture
def worker_arn(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # moto answers Invoke without running any code.
    monkeypatch.setitem(moto_config.default_user_config["lambda"], "use_docker", False)
    role = boto3.client("iam").create_role(
        RoleName="fanout", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"})
    )["Role"]["Arn"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("app.py", "def handler(event, context):\n    return None\n")
    created = boto3.client("lambda").create_function(
        FunctionName="stack-fanout",
        Runtime="python3.12",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": archive.getvalue()},
    )
    monkeypatch.setenv("FANOUT_WORKER_FUNCTION", created["FunctionArn"])
    monkeypatch.setenv("FANOUT_INVOCATION_MEMBERS", "2")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    settings.cache_clear()
    wiring.lambda_client.cache_clear()
    wiring.fanout_splitter.cache_clear()
    yield created["FunctionArn"]
    settings.cache_clear()
    wiring.lambda_client.cache_clear()
    wiring.fanout_splitter.cache_clear()


def test_the_wired_splitter_starts_the_worker_asynchronously(worker_arn: str) -> None:
    started: list[dict[str, Any]] = []

    def record(client: Any, operation: str, params: dict[str, Any], call: ApiCall) -> Any:
        if service_of(client) == "lambda" and operation == "Invoke":
            started.append(params)
        return call(client, operation, params)

    splitter = wiring.fanout_splitter()
    assert splitter is not None
    assert splitter.members == 2
    with wrapping_api_calls(record):
        left = splitter.hand_off("agent:topic:1", b'{"n":1}', [["a=", "b="], ["c="]])

    assert left == []
    assert [(p["FunctionName"], p["InvocationType"]) for p in started] == [
        (worker_arn, "Event"),
        (worker_arn, "Event"),
    ]
    assert split.parse_slice(json.loads(started[1]["Payload"])).connection_ids == ("c=",)


def test_no_splitter_without_a_worker_or_under_an_emulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FANOUT_WORKER_FUNCTION", raising=False)
    settings.cache_clear()
    wiring.fanout_splitter.cache_clear()
    assert wiring.fanout_splitter() is None
    monkeypatch.setenv("FANOUT_WORKER_FUNCTION", "arn:aws:lambda:us-east-1:1:function:f")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    settings.cache_clear()
    wiring.fanout_splitter.cache_clear()
    assert wiring.fanout_splitter() is None
    settings.cache_clear()
    wiring.fanout_splitter.cache_clear()
