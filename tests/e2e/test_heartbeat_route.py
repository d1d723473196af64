"""The heartbeat route without Lambda, through the local gateway: template.yaml's
DynamoDB integration rendered and sent to the stack's moto, no function run and
nothing answered; after the sweeper reaps the lease a heartbeat renews nothing,
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


async def until(
    check: Any,
    what: str,
    *,
    keep_open: ClientConnection | None = None,
    timeout: float = STEP_TIMEOUT,
) -> None:
    """Wait for ``check``; frames that renew nothing keep the socket under the idle
    timeout meanwhile (an unknown action: the $default route answers it)."""
    deadline = time.monotonic() + timeout
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
            await socket.send(json.dumps({"action": "heartbeat"}))
            await until(
                lambda: dev.presence(agent_id)["leases"][0]["last_seen_seconds_ago"] < 0.5,
                "the integration's renewal",
            )

            # No heartbeat past STALE_AFTER: the sweeper reaps the lease while the
            # socket stays open.
            await until(
                lambda: not dev.presence(agent_id)["routing"], "the sweep", keep_open=socket
            )
            assert dev.presence(agent_id)["leases"] == []
            await socket.send(json.dumps({"action": "heartbeat"}))
            await asyncio.sleep(1.0)
            assert dev.presence(agent_id)["leases"] == [], "a heartbeat recreates nothing"

            await socket.send(json.dumps({"action": "restore"}))
            await until(lambda: dev.presence(agent_id)["routing"], "the restore")
            assert len(dev.presence(agent_id)["leases"]) == 1
            # Nothing came back but the $default answers to the keep-open frames.
            while True:
                try:
                    frame = json.loads(await asyncio.wait_for(socket.recv(), 0.5))
                except TimeoutError:
                    break
                assert frame.get("error") == "unknown_action", frame

    asyncio.run(scenario())


def test_the_reference_client_restores_on_its_own(dev: DevServer) -> None:
    agent_id, _ = dev.new_agent("late-heartbeats")
    # Heartbeats later than STALE_AFTER plus a sweep, yet under the idle timeout:
    # every lease is reaped between two beats, and the client, seeing its beats
    # late, sends each as a restore.
    every = float(IDLE_TIMEOUT_SECONDS - 1)
    assert every > STALE_AFTER_SECONDS + 2
    client = AgentClient(
        ClientConfig(
            url=dev.ws_url,
            token=dev.token,
            agent_id=agent_id,
            session_id="late",
            heartbeat_seconds=every,
            stale_after_seconds=STALE_AFTER_SECONDS,
            late_margin_seconds=1.0,
            backoff=Backoff(first=2.0, cap=4.0),
        ),
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(client.run(stop))
        try:
            await asyncio.wait_for(client.connected.wait(), STEP_TIMEOUT)

            # Reaped a few seconds into each gap, restored by the next beat, which
            # goes out as a restore.
            reap = "the reap"
            await until(lambda: not dev.presence(agent_id)["routing"], reap, timeout=4 * every)
            restores = client.restores
            await until(lambda: dev.presence(agent_id)["routing"], "the client's restore")
            assert client.restores > restores
            assert client.restores >= 1 and client.connections == 1, "no reconnect needed"
        finally:
            stop.set()
            await asyncio.wait_for(running, STEP_TIMEOUT)

    asyncio.run(scenario())
