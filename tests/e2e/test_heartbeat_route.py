"""The heartbeat route without Lambda, through the local gateway: template.yaml's
DynamoDB integration rendered and sent to the stack's moto, its answer on the
socket; after the sweeper reaps the lease, a heartbeat answers restore_required
and the restore brings routing back. Real processes, a real WebSocket client."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from agent_channel_dev.client import AgentClient, Backoff, ClientConfig
from tests.e2e.stack import IDLE_TIMEOUT_SECONDS, STALE_AFTER_SECONDS, DevServer

pytestmark = pytest.mark.e2e

STEP_TIMEOUT = 15.0


async def answer(socket: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a frame and return the next frame that is not a stream message."""
    await socket.send(json.dumps(frame))
    while True:
        message = json.loads(await asyncio.wait_for(socket.recv(), STEP_TIMEOUT))
        if message.get("error") == "unknown_action":
            continue  # the answer to a keep-open frame
        if message.get("type") in ("heartbeat_ack", "restore_required", "restored", "error"):
            return dict(message)


async def until(check: Any, what: str, *, keep_open: ClientConnection | None = None) -> None:
    """Wait for ``check``; frames that renew nothing keep the socket under the idle
    timeout meanwhile (an unknown action: the $default route answers it)."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if keep_open is not None:
            await keep_open.send(json.dumps({"action": "keep-open"}))
        await asyncio.sleep(0.5)


def test_heartbeats_renew_and_a_reaped_lease_comes_back_through_restore(dev: DevServer) -> None:
    agent_id, _ = dev.new_agent("direct-heartbeat")
    url = f"{dev.ws_url}?agent_id={agent_id}&session_id=s1"

    async def scenario() -> None:
        headers = {"Authorization": f"Bearer {dev.token}"}
        async with websockets.connect(url, additional_headers=headers) as socket:
            await until(lambda: dev.presence(agent_id)["routing"], "routing on")
            await asyncio.sleep(1.5)
            assert await answer(socket, {"action": "heartbeat"}) == {"type": "heartbeat_ack"}
            (lease,) = dev.presence(agent_id)["leases"]
            assert lease["last_seen_seconds_ago"] < 1.0, "renewed by the integration"

            # No heartbeat past STALE_AFTER: the sweeper reaps the lease while the
            # socket stays open.
            await until(
                lambda: not dev.presence(agent_id)["routing"], "the sweep", keep_open=socket
            )
            assert dev.presence(agent_id)["leases"] == []
            assert await answer(socket, {"action": "heartbeat"}) == {"type": "restore_required"}
            assert dev.presence(agent_id)["leases"] == [], "a heartbeat recreates nothing"

            assert await answer(socket, {"action": "restore"}) == {"type": "restored"}
            restored = dev.presence(agent_id)
            assert restored["routing"] is True and len(restored["leases"]) == 1
            assert await answer(socket, {"action": "heartbeat"}) == {"type": "heartbeat_ack"}

    asyncio.run(scenario())


def test_the_reference_client_restores_on_its_own(dev: DevServer) -> None:
    agent_id, _ = dev.new_agent("late-heartbeats")
    # Heartbeats later than STALE_AFTER plus a sweep, yet under the idle timeout:
    # every lease is reaped between two heartbeats, and each heartbeat restores it.
    every = float(STALE_AFTER_SECONDS + 3)
    assert every < IDLE_TIMEOUT_SECONDS
    states: list[str] = []
    client = AgentClient(
        ClientConfig(
            url=dev.ws_url,
            token=dev.token,
            agent_id=agent_id,
            session_id="late",
            heartbeat_seconds=every,
            backoff=Backoff(first=2.0, cap=4.0),
        ),
        on_state=states.append,
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(client.run(stop))
        try:
            await asyncio.wait_for(client.connected.wait(), STEP_TIMEOUT)
            await until(lambda: not dev.presence(agent_id)["routing"], "the reap")
            await until(lambda: "lease restored" in states, "the client's restore")
            assert dev.presence(agent_id)["routing"] is True
            assert client.restores >= 1 and client.connections == 1, "no reconnect needed"
        finally:
            stop.set()
            await asyncio.wait_for(running, STEP_TIMEOUT)

    asyncio.run(scenario())
