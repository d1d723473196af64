"""The gateway's flags for what AWS leaves undocumented, on a real server and a
real client, with functions that only record what they were given (the gateway
is independent of how functions run: the Invoker is its one dependency)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import boto3
import pytest
import websockets
from aiohttp import web

from agent_channel_dev.local.connections_api import add_connection_routes, serve_in_thread
from agent_channel_dev.local.gateway import Gateway, GatewayOptions
from agent_channel_dev.local.sam_app import WebSocketApi

pytestmark = pytest.mark.e2e

API = WebSocketApi(
    logical_id="Api",
    api_id="abcdefghij",
    stage="t",
    route_selection_expression="$request.body.action",
    routes={"$connect": "C", "$disconnect": "D", "work": "W"},
    authorizer=None,
)


class Recorder:
    """Functions that sleep as asked and record when they ran."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, float, float]] = []
        self.disconnects: list[dict[str, Any]] = []

    async def invoke(self, logical_id: str, event: Any) -> Any:
        if logical_id == "D":
            self.disconnects.append(event)
        if logical_id == "W":
            body = json.loads(event["body"])
            started = time.monotonic()
            await asyncio.sleep(body["seconds"])
            self.runs.append((body["tag"], started, time.monotonic()))
        return {"statusCode": 200}


def serve(options: GatewayOptions) -> tuple[Gateway, Recorder, Any]:
    recorder = Recorder()
    gateway = Gateway(API, recorder, options)
    app = web.Application()
    gateway.mount(app)
    add_connection_routes(app, gateway, stage=API.stage)
    return gateway, recorder, serve_in_thread(app)


async def two_frames(url: str, recorder: Recorder) -> None:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"action": "work", "tag": "slow", "seconds": 0.6}))
        await ws.send(json.dumps({"action": "work", "tag": "quick", "seconds": 0}))
        deadline = time.monotonic() + 5
        while len(recorder.runs) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("ordered", [False, True])
def test_frames_of_one_socket_run_in_order_only_when_asked(ordered: bool) -> None:
    _, recorder, running = serve(GatewayOptions(ordered_frames=ordered))
    with running as server:
        asyncio.run(two_frames(f"ws://{server.host}:{server.port}/t", recorder))
    runs = {tag: (start, end) for tag, start, end in recorder.runs}
    if ordered:
        assert runs["quick"][0] >= runs["slow"][1]  # waited for the frame before it
    else:
        assert runs["quick"][1] < runs["slow"][1]  # AWS's default: no order at all


@pytest.mark.parametrize("code", [1001, 4000])
def test_the_close_code_of_a_deleted_connection_is_a_flag(code: int) -> None:
    gateway, recorder, running = serve(GatewayOptions(delete_close_code=code))

    async def deleted(server: Any) -> int | None:
        async with websockets.connect(f"ws://{server.host}:{server.port}/t") as ws:
            (connection_id,) = list(gateway._sockets)
            api = boto3.client(
                "apigatewaymanagementapi",
                endpoint_url=server.endpoint_url("t"),
                region_name="us-east-1",
                aws_access_key_id="local",
                aws_secret_access_key="local",
            )
            await asyncio.to_thread(api.delete_connection, ConnectionId=connection_id)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code

    with running as server:
        assert asyncio.run(deleted(server)) == code
        deadline = time.monotonic() + 5
        while not recorder.disconnects and time.monotonic() < deadline:
            time.sleep(0.05)
    assert recorder.disconnects[0]["requestContext"]["disconnectStatusCode"] == code
