"""The local gateway against API Gateway's documented behaviour, row by row, end to
end: ``agent-channel dev --template`` serves the probe app (tests/apps/probe), real
clients connect over TCP, and every event the functions received is read back
from the app's own table in the embedded moto and checked against Powertools'
parser models. The row numbers are those of docs/LOCAL_STACK.md."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import boto3
import pytest
import websockets
from botocore.exceptions import ClientError
from websockets.frames import Opcode

from tests.e2e.stack import AppServer, start_app_server, wait_until
from tests.support.event_models import conforms, kind
from tests.support.raw_websocket import RawSocket

pytestmark = pytest.mark.e2e

PROBE = Path(__file__).resolve().parents[1] / "apps" / "probe" / "template.yaml"
IDLE_SECONDS = 5.0
"""Longer than any sleep a test asks of the probe: a socket that only waits for a
slow function sends nothing, and is idle (only client messages count)."""
MAX_CONNECTION_SECONDS = 9.0
FRAME = 32 * 1024
MESSAGE = 128 * 1024
REQUEST_ID = re.compile(r"^[A-Za-z0-9_\-]{14,15}=$")


@pytest.fixture(scope="module")
def probe() -> Iterator[AppServer]:
    server = start_app_server(
        PROBE,
        "--idle-timeout-seconds",
        str(IDLE_SECONDS),
        "--max-connection-seconds",
        str(MAX_CONNECTION_SECONDS),
    )
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output.lines[-30:]


def url(server: AppServer, token: str = "allow-ada", *query: tuple[str, str]) -> str:  # noqa: S107
    return f"{server.ws_url}?{urlencode([('token', token), *query])}"


def table(server: AppServer) -> Any:
    dynamodb = boto3.resource(
        "dynamodb",
        endpoint_url=server.moto_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    (name,) = [t.name for t in dynamodb.tables.all()]
    return dynamodb.Table(name)


def recorded(server: AppServer, connection_id: str) -> list[dict[str, Any]]:
    """Every event the probe's functions received for the connection, in order."""
    items = table(server).query(
        KeyConditionExpression=boto3.dynamodb.conditions.Key("connectionId").eq(connection_id)
    )["Items"]
    return [json.loads(item["event"]) if "event" in item else item for item in items]


def disconnect_of(server: AppServer, connection_id: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        events = [e for e in recorded(server, connection_id) if "requestContext" in e]
        return next((e for e in events if kind(e) == "DISCONNECT"), None)

    return wait_until(found, 20, "the $disconnect event")


def probe_message(route: str, **fields: Any) -> str:
    return json.dumps({"probe": {"route": route, **fields}})


async def echo(ws: Any, tag: str = "") -> dict[str, Any]:
    await ws.send(probe_message("echo", tag=tag))
    reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return reply


def connection_id_of(raw: RawSocket) -> str:
    raw.send_text(probe_message("echo"))
    raw.wait(20, count=1)
    assert raw.data_frames(), f"no echo (upgrade {raw.status}, close {raw.close_code})"
    reply = json.loads(b"".join(f.data for f in raw.data_frames()))
    raw.frames.clear()
    return str(reply["event"]["requestContext"]["connectionId"])


# -- row 1 and 14: frames of at most 32 KB, messages of at most 128 KB -----------------


def test_row_1_a_client_frame_over_32_kb_closes_the_socket_with_1009(probe: AppServer) -> None:
    raw = RawSocket.connect(url(probe))
    connection_id = connection_id_of(raw)
    body = probe_message("big", size=10, pad="x" * FRAME)
    raw.send_frame(Opcode.TEXT, body.encode())
    raw.wait(10)
    assert raw.close_code == 1009
    assert raw.data_frames() == []  # never routed
    assert disconnect_of(probe, connection_id)["requestContext"]["disconnectStatusCode"] == 1009


def test_row_14_a_128_kb_message_in_32_kb_frames_is_routed_and_one_byte_more_is_not(
    probe: AppServer,
) -> None:
    envelope = probe_message("big", size=10, pad="")
    pad = "x" * (MESSAGE - len(envelope))
    exactly = probe_message("big", size=10, pad=pad)
    assert len(exactly.encode()) == MESSAGE
    raw = RawSocket.connect(url(probe))
    raw.send_text(exactly, frame_size=FRAME)
    raw.wait(10, count=1)
    assert [f.data for f in raw.data_frames()] == [b"x" * 10]

    over = RawSocket.connect(url(probe))
    over.send_text(probe_message("big", size=10, pad=pad + "x"), frame_size=FRAME)
    over.wait(10)
    assert over.close_code == 1009
    assert over.data_frames() == []


def test_row_14_a_post_over_32_kb_reaches_the_client_as_several_frames(probe: AppServer) -> None:
    raw = RawSocket.connect(url(probe))
    raw.send_text(probe_message("big", size=100_000))
    raw.wait(10, count=4)
    received = raw.data_frames()
    assert [f.opcode for f in received] == [Opcode.TEXT, Opcode.CONT, Opcode.CONT, Opcode.CONT]
    assert all(len(f.data) <= FRAME for f in received)
    assert [f.fin for f in received] == [False, False, False, True]
    assert b"".join(f.data for f in received) == b"x" * 100_000


# -- row 2: binary frames ---------------------------------------------------------------


def test_row_2_a_binary_frame_closes_with_1003_and_is_not_routed(probe: AppServer) -> None:
    raw = RawSocket.connect(url(probe))
    connection_id = connection_id_of(raw)
    raw.send_frame(Opcode.BINARY, probe_message("echo").encode())
    raw.wait(10)
    assert raw.close_code == 1003
    assert raw.data_frames() == []
    events = [e for e in recorded(probe, connection_id) if "requestContext" in e]
    disconnect_of(probe, connection_id)
    assert [kind(e) for e in recorded(probe, connection_id)] == [
        "AUTHORIZER",
        "CONNECT",
        "MESSAGE",
        "DISCONNECT",
    ], events


# -- row 3, 4, 11, 12: the events themselves -------------------------------------------


def test_rows_3_4_11_12_every_event_conforms_and_reads_as_api_gateway_writes_it(
    probe: AppServer,
) -> None:
    async def session() -> tuple[dict[str, Any], dict[str, Any]]:
        address = url(probe, "allow-ada", ("tag", "a"), ("tag", "b"))
        async with websockets.connect(address, user_agent_header="probe/1.0") as ws:
            first = await echo(ws, "first")
            await asyncio.sleep(1.1)
            second = await echo(ws, "second")
            await ws.close(code=1000, reason="bye")
        return first["event"], second["event"]

    first, second = asyncio.run(session())
    connection_id = first["requestContext"]["connectionId"]
    disconnect_of(probe, connection_id)
    events = recorded(probe, connection_id)
    assert [kind(e) for e in events] == [
        "AUTHORIZER",
        "CONNECT",
        "MESSAGE",
        "MESSAGE",
        "DISCONNECT",
    ]
    for event in events:
        conforms(event)  # row 4 included: $disconnect has headers and multiValueHeaders
    authorizer, connect, _, _, disconnect = events

    # Row 3: connectedAt is the connection's, not the event's.
    connected_at = connect["requestContext"]["connectedAt"]
    assert first["requestContext"]["connectedAt"] == connected_at
    assert second["requestContext"]["connectedAt"] == connected_at
    assert disconnect["requestContext"]["connectedAt"] == connected_at
    assert (
        second["requestContext"]["requestTimeEpoch"] - first["requestContext"]["requestTimeEpoch"]
        >= 1000
    )

    # Row 11: every value of a repeated query parameter.
    for event in (authorizer, connect):
        assert event["multiValueQueryStringParameters"]["tag"] == ["a", "b"]
        assert event["queryStringParameters"]["tag"] == "b"

    # Row 12: API Gateway's headers and ids, without the hop-by-hop ones.
    headers = connect["headers"]
    assert not {"connection", "upgrade"} & {name.lower() for name in headers}
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Port"] == "443"
    assert headers["X-Forwarded-Proto"] == "https"
    assert re.match(r"^Root=1-[0-9a-f]{8}-[0-9a-f]{24}$", headers["X-Amzn-Trace-Id"])
    assert connect["multiValueHeaders"]["User-Agent"] == ["probe/1.0"]
    assert connect["requestContext"]["identity"]["userAgent"] == "probe/1.0"
    for event in (authorizer, connect, first, second, disconnect):
        context = event["requestContext"]
        assert REQUEST_ID.match(context["requestId"]), context["requestId"]
        assert ":" not in context["domainName"]
        assert context["domainName"].startswith(context["apiId"] + ".execute-api.")
    assert REQUEST_ID.match(first["requestContext"]["messageId"])
    assert first["requestContext"]["authorizer"]["who"] == "ada"

    # A close frame with a status: its code and reason.
    assert disconnect["requestContext"]["disconnectStatusCode"] == 1000
    assert disconnect["requestContext"]["disconnectReason"] == "bye"


# -- row 5: a close frame without a status ---------------------------------------------


def test_row_5_a_close_frame_without_a_status_reports_1005_and_a_reason(probe: AppServer) -> None:
    raw = RawSocket.connect(url(probe))
    connection_id = connection_id_of(raw)
    raw.close_without_status()
    raw.wait(5)
    context = disconnect_of(probe, connection_id)["requestContext"]
    assert context["disconnectStatusCode"] == 1005
    assert context["disconnectReason"] == "Client-side close frame status not set"


def test_a_dropped_tcp_connection_reports_1006(probe: AppServer) -> None:
    raw = RawSocket.connect(url(probe))
    connection_id = connection_id_of(raw)
    raw.shut()
    assert disconnect_of(probe, connection_id)["requestContext"]["disconnectStatusCode"] == 1006


# -- row 6: idle timeout and connection duration ----------------------------------------


def test_row_6_an_idle_socket_is_closed_with_1001(probe: AppServer) -> None:
    raw = RawSocket.connect(url(probe))
    started = time.monotonic()  # the last client message is sent after this
    connection_id = connection_id_of(raw)
    raw.wait(IDLE_SECONDS + 5)
    assert raw.close_code == 1001
    assert IDLE_SECONDS - 0.2 <= time.monotonic() - started <= IDLE_SECONDS + 5
    assert disconnect_of(probe, connection_id)["requestContext"]["disconnectStatusCode"] == 1001


def test_row_6_an_active_socket_is_closed_at_the_connection_limit(probe: AppServer) -> None:
    raw = RawSocket.connect(url(probe))
    opened = time.monotonic()
    while raw.open and time.monotonic() - opened < MAX_CONNECTION_SECONDS + 5:
        raw.send_text(probe_message("big", size=1))
        raw.wait(1.0, count=len(raw.data_frames()) + 1)
    assert raw.close_code == 1001
    assert time.monotonic() - opened >= MAX_CONNECTION_SECONDS - 0.5


# -- row 7: frames are invocations of their own -----------------------------------------


def test_row_7_frames_of_one_socket_are_not_serialized(probe: AppServer) -> None:
    async def session() -> list[str]:
        async with websockets.connect(url(probe)) as ws:
            await ws.send(probe_message("sleep", seconds=4, tag="slow"))
            await ws.send(probe_message("echo", tag="quick"))
            replies = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
        return [reply["tag"] for reply in replies]

    assert asyncio.run(session()) == ["quick", "slow"]


# -- row 8 and 9: what accepts an upgrade -----------------------------------------------


def upgrade_status(address: str) -> int:
    async def attempt() -> int:
        try:
            async with websockets.connect(address, open_timeout=10):
                return 101
        except websockets.InvalidStatus as refused:
            return int(refused.response.status_code)

    return asyncio.run(attempt())


def test_row_8_any_2xx_from_connect_accepts(probe: AppServer) -> None:
    assert upgrade_status(url(probe, "allow-ada", ("status", "204"))) == 101
    assert upgrade_status(url(probe, "allow-ada", ("status", "299"))) == 101
    assert upgrade_status(url(probe, "allow-ada", ("status", "302"))) == 302
    assert upgrade_status(url(probe, "allow-ada", ("status", "409"))) == 409
    assert upgrade_status(url(probe, "allow-ada", ("status", "700"))) == 500  # malformed


def test_the_authorizer_answers_401_403_and_500_and_identity_sources_are_required(
    probe: AppServer,
) -> None:
    items_before = table(probe).scan(Select="COUNT")["Count"]
    assert upgrade_status(probe.ws_url) == 401  # no token: the authorizer never runs
    assert table(probe).scan(Select="COUNT")["Count"] == items_before
    assert upgrade_status(url(probe, "bad")) == 401
    assert upgrade_status(url(probe, "deny")) == 403
    assert upgrade_status(url(probe, "broken")) == 500


def test_row_9_a_plain_get_runs_nothing(probe: AppServer) -> None:
    items_before = table(probe).scan(Select="COUNT")["Count"]
    request = urllib.request.Request(url(probe).replace("ws://", "http://"))  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 (loopback)
    assert answer.value.code == 426
    time.sleep(0.5)
    assert table(probe).scan(Select="COUNT")["Count"] == items_before


# -- row 10: no pings -------------------------------------------------------------------


def test_row_10_the_gateway_never_pings(probe: AppServer) -> None:
    async def session() -> list[aiohttp.WSMsgType]:
        kinds: list[aiohttp.WSMsgType] = []
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url(probe), autoping=False, heartbeat=None) as ws,
        ):
            for _ in range(5):
                await ws.send_str(probe_message("big", size=1))
                kinds.append((await ws.receive(timeout=10)).type)
                await asyncio.sleep(0.5)
        return kinds

    assert asyncio.run(session()) == [aiohttp.WSMsgType.TEXT] * 5


# -- row 13: signed @connections --------------------------------------------------------


def test_row_13_unsigned_or_wrongly_signed_management_calls_are_forbidden(
    probe: AppServer,
) -> None:
    raw = RawSocket.connect(url(probe))
    connection_id = connection_id_of(raw)
    endpoint = f"{probe.callback_url}/@connections/{connection_id}"
    unsigned = urllib.request.Request(endpoint, data=b"unsigned", method="POST")  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=10)  # noqa: S310 (loopback)
    assert refused.value.code == 403
    assert refused.value.headers["x-amzn-ErrorType"] == "ForbiddenException"

    def client(secret: str) -> Any:
        return boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=probe.callback_url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key=secret,
        )

    with pytest.raises(ClientError) as wrong:
        client("not-the-secret").post_to_connection(ConnectionId=connection_id, Data=b"wrong")
    assert wrong.value.response["Error"]["Code"] == "ForbiddenException"
    client("local").post_to_connection(ConnectionId=connection_id, Data=b"signed")
    raw.wait(5, count=1)
    assert [f.data for f in raw.data_frames()] == [b"signed"]


def test_row_13_a_function_without_manage_connections_is_forbidden(probe: AppServer) -> None:
    raw = RawSocket.connect(url(probe))
    connection_id = connection_id_of(raw)
    raw.send_text(probe_message("nopost"))

    def outcome() -> str | None:
        found = [e for e in recorded(probe, connection_id) if "outcome" in e]
        return str(found[0]["outcome"]) if found else None

    assert wait_until(outcome, 10, "the nopost outcome") == "ForbiddenException"
    raw.wait(1)
    assert raw.data_frames() == []


# -- point 4: failures, timeouts, environments, parallel workers ------------------------


def test_a_failing_or_timed_out_function_sends_api_gateways_error_message(
    probe: AppServer,
) -> None:
    async def session() -> list[dict[str, Any]]:
        async with websockets.connect(url(probe)) as ws:
            await ws.send(probe_message("boom"))
            boom = json.loads(await asyncio.wait_for(ws.recv(), 10))
            started = time.monotonic()
            await ws.send(probe_message("slow", seconds=5))
            slow = json.loads(await asyncio.wait_for(ws.recv(), 10))
            slow["elapsed"] = time.monotonic() - started
            after = await echo(ws, "after")
        return [boom, slow, after]

    boom, slow, after = asyncio.run(session())
    for answer in (boom, slow):
        assert answer["message"] == "Internal server error"
        assert REQUEST_ID.match(answer["requestId"])
        assert answer["connectionId"] == after["event"]["requestContext"]["connectionId"]
    assert slow["elapsed"] < 3.5  # stopped at its Timeout (1 s), not after its 5 s sleep
    assert after["tag"] == "after"


def test_each_function_sees_exactly_its_template_environment(probe: AppServer) -> None:
    async def session() -> list[str]:
        async with websockets.connect(url(probe)) as ws:
            await ws.send(probe_message("env"))
            names: list[str] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return names

    names = set(asyncio.run(session()))
    lambda_own = {n for n in names if n.startswith(("AWS_", "LAMBDA_", "_"))}
    lambda_own |= {"TZ", "LANG", "PATH"}
    assert names - lambda_own == {"EVENTS_TABLE", "ONLY_ECHO_HAS_THIS"}
    assert {"AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "_HANDLER"} <= names


def test_functions_run_in_parallel_worker_processes(probe: AppServer) -> None:
    async def sleeper(tag: str) -> float:
        async with websockets.connect(url(probe)) as ws:
            await ws.send(probe_message("sleep", seconds=3, tag=tag))
            await asyncio.wait_for(ws.recv(), 15)
        return time.monotonic()

    async def three() -> float:
        started = time.monotonic()
        ended = await asyncio.gather(*(sleeper(str(i)) for i in range(3)))
        return max(ended) - started

    # One after another this would take 9 s; three workers take about 3.
    assert asyncio.run(three()) < 7.5
