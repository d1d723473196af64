"""``agent-channel dev --template`` serves another project's SAM WebSocket app
unmodified: the chat app of tests/apps/chat (the shape of aws-samples'
simple-websockets-chat-app, in Python, none of this project's code), its table
in the embedded moto, driven by real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import websockets

from tests.e2e.stack import (
    AppServer,
    app_environment,
    command_line,
    start_app_server,
    wait_until,
)

pytestmark = pytest.mark.e2e

CHAT = Path(__file__).resolve().parents[1] / "apps" / "chat" / "template.yaml"


@pytest.fixture(scope="module")
def chat() -> Iterator[AppServer]:
    server = start_app_server(CHAT)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output.lines[-30:]


def connections(server: AppServer) -> set[str]:
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=server.moto_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    items = dynamodb.scan(TableName="simplechat_connections")["Items"]
    return {item["connectionId"]["S"] for item in items}


def test_the_template_is_served_as_declared(chat: AppServer) -> None:
    # The stage and table name come from the template (Prod, the TableName default).
    assert chat.ws_url.endswith("/Prod")
    assert connections(chat) == set()


def test_sendmessage_reaches_every_connection_and_disconnect_forgets_one(chat: AppServer) -> None:
    async def session() -> tuple[list[list[str]], str, list[str]]:
        sockets = [await websockets.connect(chat.ws_url) for _ in range(3)]
        try:
            wait_until(lambda: len(connections(chat)) == 3, 10, "three stored connections")
            await sockets[0].send(json.dumps({"action": "sendmessage", "data": "hello all"}))
            heard = [[await asyncio.wait_for(ws.recv(), 10)] for ws in sockets]
            await sockets[2].close()
            wait_until(lambda: len(connections(chat)) == 2, 10, "the leaver to be forgotten")
            await sockets[1].send(json.dumps({"action": "sendmessage", "data": "still here"}))
            again = [await asyncio.wait_for(ws.recv(), 10) for ws in sockets[:2]]
            # No $default route: an unknown action is refused as API Gateway refuses it.
            await sockets[0].send(json.dumps({"action": "shout"}))
            refused = await asyncio.wait_for(sockets[0].recv(), 10)
        finally:
            for ws in sockets:
                await ws.close()
        return heard, str(refused), [str(a) for a in again]

    heard, refused, again = asyncio.run(session())
    assert heard == [["hello all"]] * 3
    assert again == ["still here"] * 2
    answer: dict[str, Any] = json.loads(refused)
    assert answer["message"] == "Forbidden"
    assert set(answer) == {"message", "connectionId", "requestId"}
    wait_until(lambda: connections(chat) == set(), 10, "every connection forgotten")


def test_a_template_that_cannot_be_served_is_refused_with_its_reason(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text(CHAT.read_text(encoding="utf-8").replace("python3.12", "nodejs20.x"))
    done = subprocess.run(
        command_line("dev", "--port", "0", "--template", str(template)),
        capture_output=True,
        text=True,
        timeout=60,
        env=app_environment(),
        check=False,
    )
    assert done.returncode == 2
    assert "only Python runtimes are served, not nodejs20.x" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_function_that_cannot_start_fails_the_launch_and_is_named(tmp_path: Path) -> None:
    app = tmp_path / "chat"
    shutil.copytree(CHAT.parent, app)
    (app / "sendmessage" / "app.py").write_text("import not_a_module\n")
    done = subprocess.run(
        command_line("dev", "--port", "0", "--template", str(app / "template.yaml")),
        capture_output=True,
        text=True,
        timeout=90,
        env=app_environment(),
        check=False,
    )
    assert done.returncode == 1
    failure = done.stderr.splitlines()[-1]
    assert failure.startswith("a function failed to start: ")
    report = json.loads(failure.removeprefix("a function failed to start: "))
    assert report["function"] == "SendMessageFunction"
    assert report["errorType"] == "Runtime.ImportModuleError"
