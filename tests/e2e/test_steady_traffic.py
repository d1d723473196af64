"""A new session survives traffic: while the backend broadcasts to an agent's stream
without pause, sessions connect, heartbeat and reconnect many times, and every
connected session keeps a live lease and stays routable. Before the 410 rule, a
post landing in a new socket's handshake window removed its lease and routing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from agent_channel_dev.backend_transport import LocalTransport
from tests.e2e.stack import HEARTBEAT_SECONDS, DevServer

pytestmark = pytest.mark.e2e

ROUNDS = 16
SETTLE_SECONDS = 0.4
SETTLE_TIMEOUT = 15.0


class Session:
    """A plugin's socket: a heartbeat every HEARTBEAT_SECONDS, and a reader that
    keeps the error frames it receives."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.errors: list[dict[str, Any]] = []
        self._tasks = [asyncio.create_task(self._beat()), asyncio.create_task(self._read())]

    async def _beat(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await self.socket.send(json.dumps({"action": "heartbeat"}))
                await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self.socket:
                message = json.loads(frame)
                if message.get("type") == "error":
                    self.errors.append(message)

    async def probe(self) -> list[dict[str, Any]]:
        """Ask for a replay (allowed only while the socket holds a lease); the error
        frames received so far, after a moment for an answer to arrive."""
        await self.socket.send(
            json.dumps({"action": "replay_permissions", "request_ids": ["probe"]})
        )
        await asyncio.sleep(SETTLE_SECONDS)
        return list(self.errors)

    async def close(self) -> None:
        await self.socket.close()
        for task in self._tasks:
            task.cancel()


async def open_session(dev: DevServer, agent_id: int, session_id: str) -> Session:
    url = f"{dev.ws_url}?agent_id={agent_id}&session_id={session_id}"
    socket = await websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {dev.token}"}, open_timeout=10
    )
    return Session(socket)


async def settled_presence(dev: DevServer, agent_id: int, *, live: int, what: str) -> None:
    """Routing on and exactly the open sessions live, once the closed socket's
    $disconnect (asynchronous, as on AWS) has run. A new session that lost its lease
    never gets there."""
    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT
    while True:
        presence = await asyncio.to_thread(dev.presence, agent_id)
        if presence["routing"] is True and presence["live_sessions"] == live:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: {json.dumps(presence)}")
        await asyncio.sleep(0.2)


def test_sessions_stay_live_and_routable_through_steady_broadcasts(dev: DevServer) -> None:
    agent_id, topic_id = dev.new_agent("steady")
    backend = LocalTransport(dev.backend, secret=dev.secret)
    stop = threading.Event()
    answers: list[dict[str, Any]] = []

    def pump() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            payload = {"type": "note", "n": n}
            answers.append(
                backend.call({"op": "broadcast", "agent_id": agent_id, "payload": payload})
            )

    async def scenario() -> None:
        anchor = await open_session(dev, agent_id, "anchor")
        current = await open_session(dev, agent_id, "rotating-0")
        for round_number in range(1, ROUNDS + 1):
            # A reconnect: the new socket opens under traffic, then the old one goes.
            replacement = await open_session(dev, agent_id, f"rotating-{round_number % 3}")
            await current.close()
            current = replacement
            # Both sockets probed at once: each waits SETTLE_SECONDS for its answer.
            probed = await asyncio.gather(anchor.probe(), current.probe())
            assert probed == [[], []], f"round {round_number}"
            await settled_presence(dev, agent_id, live=2, what=f"round {round_number}")
        # Alone under traffic: the last session of the agent must survive too.
        await anchor.close()
        for round_number in range(ROUNDS // 4):
            replacement = await open_session(dev, agent_id, f"alone-{round_number}")
            await current.close()
            current = replacement
            assert await current.probe() == [], f"alone, round {round_number}"
            await settled_presence(dev, agent_id, live=1, what=f"alone, round {round_number}")
        task_id = await asyncio.to_thread(dev.dispatch, agent_id, topic_id, "still routable")
        assert task_id > 0
        await current.close()

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()
    try:
        asyncio.run(scenario())
    finally:
        stop.set()
        pumping.join(timeout=30)
    assert len(answers) > ROUNDS, "the broadcasts were steady"
    assert all(answer["ok"] for answer in answers), [a for a in answers if not a["ok"]][:3]
    assert any(answer["gone"] for answer in answers), "some posts met a socket in its handshake"
