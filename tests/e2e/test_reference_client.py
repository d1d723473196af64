"""The reference agent client (agent_channel.client) against the dev server:
heartbeat, reconnect with backoff, and replay after reconnect. Nothing mocked: the
connection is cut through the real @connections API, as a backend would cut it."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import boto3
import pytest

from agent_channel_dev.client import (
    AgentClient,
    Backoff,
    ClientConfig,
    ConnectRefused,
    replay_frames,
)
from tests.e2e.stack import HEARTBEAT_SECONDS, STALE_AFTER_SECONDS, DevServer, start_dev_server

pytestmark = pytest.mark.e2e

STEP_TIMEOUT = 15.0


def config(dev: DevServer, agent_id: int, **overrides: Any) -> ClientConfig:
    settings: dict[str, Any] = {
        "url": dev.ws_url,
        "token": dev.token,
        "agent_id": agent_id,
        "session_id": "plugin-1",
        "heartbeat_seconds": HEARTBEAT_SECONDS,
        "backoff": Backoff(first=2.0, cap=4.0),
    }
    settings.update(overrides)
    return ClientConfig(**settings)


async def eventually(check: Any, what: str, timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def test_heartbeat_reconnect_and_replay_of_a_decision_made_offline(dev: DevServer) -> None:
    agent_id, _ = dev.new_agent("plugin")
    decisions: list[dict[str, Any]] = []
    states: list[tuple[float, str]] = []
    client = AgentClient(
        config(dev, agent_id),
        on_decision=decisions.append,
        on_state=lambda state: states.append((time.monotonic(), state)),
    )
    client.hold("r-offline")
    client.hold("r-still-waiting")
    api = boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=dev.callback_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(client.run(stop))
        try:
            await asyncio.wait_for(client.connected.wait(), STEP_TIMEOUT)

            # Heartbeats keep the lease live well past STALE_AFTER.
            await asyncio.sleep(STALE_AFTER_SECONDS + 2)
            presence = await asyncio.to_thread(dev.presence, agent_id)
            assert presence["routing"] is True
            assert presence["live_sessions"] == 1
            assert presence["leases"][0]["last_seen_seconds_ago"] < STALE_AFTER_SECONDS
            connection_id = presence["leases"][0]["connection_id"]

            # A decision for an id the client does not hold is dropped.
            unheld = await asyncio.to_thread(
                dev.cli,
                "decide",
                "--agent",
                str(agent_id),
                "--request",
                "r-unheld",
                "--allow",
                "--by",
                str(dev.owner_id),
            )
            assert unheld["delivered"] == [connection_id]

            # The backend cuts the socket; the decision is made while it is down.
            await asyncio.to_thread(api.delete_connection, ConnectionId=connection_id)
            await eventually(lambda: not client.connected.is_set(), "the client to notice")
            offline = await asyncio.to_thread(
                dev.cli,
                "decide",
                "--agent",
                str(agent_id),
                "--request",
                "r-offline",
                "--deny",
                "--by",
                str(dev.owner_id),
            )
            assert offline["delivered"] == []

            # Back after the backoff, the replay brings the decision.
            await eventually(lambda: client.connections == 2, "the reconnect")
            await eventually(lambda: bool(decisions), "the replayed decision")
        finally:
            stop.set()
            await asyncio.wait_for(running, STEP_TIMEOUT)

    asyncio.run(scenario())

    assert [(d["request_id"], d["behavior"]) for d in decisions] == [("r-offline", "deny")]
    assert decisions[0]["agent_id"] == agent_id
    assert client.pending == {"r-still-waiting"}
    lost = next(t for t, s in states if s.startswith(("disconnected", "connection lost")))
    back = [t for t, s in states if s == "connected"][1]
    # Jittered backoff from 2 s: never sooner than half the first step.
    assert back - lost >= 1.0


def test_a_refused_token_stops_the_client_instead_of_retrying(dev: DevServer) -> None:
    client = AgentClient(config(dev, dev.agent_id, token="act_revoked-or-never-issued"))

    async def scenario() -> None:
        with pytest.raises(ConnectRefused) as refused:
            await asyncio.wait_for(client.run(), STEP_TIMEOUT)
        assert refused.value.status == 401

    asyncio.run(scenario())
    assert client.connections == 0


def test_the_token_may_travel_in_the_query(dev: DevServer) -> None:
    agent_id, _ = dev.new_agent("query-token")
    client = AgentClient(config(dev, agent_id, token_in_query=True))

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(client.run(stop))
        await asyncio.wait_for(client.connected.wait(), STEP_TIMEOUT)
        stop.set()
        await asyncio.wait_for(running, STEP_TIMEOUT)

    asyncio.run(scenario())
    assert client.connections == 1


def test_backoff_doubles_from_one_second_to_a_minute_with_jitter() -> None:
    backoff = Backoff()
    for failures, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (6, 60.0), (40, 60.0)]:
        delays = [backoff.delay(failures) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1


def test_a_long_replay_is_split_into_frames_the_gateway_accepts(dev: DevServer) -> None:
    """500 pending ids of 64 characters are one 34 KB frame: API Gateway would close
    the socket with 1009 and the client would reconnect and resend forever."""
    agent_id, _ = dev.new_agent("many-pending")
    held = [f"perm-{index:04d}-" + "x" * 54 for index in range(500)]
    assert all(len(request_id) == 64 for request_id in held)
    assert len(json.dumps({"action": "replay_permissions", "request_ids": held})) > 32 * 1024
    frames = replay_frames(held)
    assert len(frames) == 5  # MAX_REPLAY_IDS (100) per frame
    assert all(len(frame.encode()) <= 32 * 1024 for frame in frames)
    assert [i for frame in frames for i in json.loads(frame)["request_ids"]] == held

    decided_last = held[-1]
    dev.cli(
        "decide", "--agent", str(agent_id), "--request", decided_last, "--allow",
        "--by", str(dev.owner_id),
    )  # fmt: skip
    decisions: list[dict[str, Any]] = []
    client = AgentClient(config(dev, agent_id), on_decision=decisions.append)
    for request_id in held:
        client.hold(request_id)

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(client.run(stop))
        try:
            await eventually(lambda: bool(decisions), "the replayed decision")
            await asyncio.sleep(HEARTBEAT_SECONDS + 1)
        finally:
            stop.set()
            await asyncio.wait_for(running, STEP_TIMEOUT)

    asyncio.run(scenario())
    assert [d["request_id"] for d in decisions] == [decided_last]
    assert client.connections == 1  # never closed with 1009, never reconnected


def test_replay_frames_respect_both_limits_for_long_and_non_ascii_ids() -> None:
    longest = ["é" * 256 + str(i) for i in range(300)]
    frames = replay_frames(longest)
    assert all(len(frame.encode()) <= 32 * 1024 for frame in frames)
    assert all(len(json.loads(frame)["request_ids"]) <= 100 for frame in frames)
    assert [i for frame in frames for i in json.loads(frame)["request_ids"]] == longest
    assert replay_frames([]) == []


def test_the_connection_limit_forces_a_reconnect_that_resumes_the_session() -> None:
    """API Gateway closes every socket after 2 hours (here: 4 s). The reference
    client comes back, and routing with it; a decision made while it was away
    arrives through the replay."""
    dev = start_dev_server("--max-connection-seconds", "4")
    try:
        agent_id, _ = dev.new_agent("forced-close")
        decisions: list[dict[str, Any]] = []
        states: list[str] = []
        client = AgentClient(
            config(dev, agent_id, backoff=Backoff(first=6.0, cap=6.0)),
            on_decision=decisions.append,
            on_state=states.append,
        )
        client.hold("r-while-away")

        async def scenario() -> None:
            stop = asyncio.Event()
            running = asyncio.create_task(client.run(stop))
            try:
                await asyncio.wait_for(client.connected.wait(), STEP_TIMEOUT)
                await eventually(lambda: not client.connected.is_set(), "the forced close")
                # Routing is off while it is away, so the decision is only recorded.
                await eventually(lambda: not dev.presence(agent_id)["routing"], "routing to clear")
                decided = await asyncio.to_thread(
                    dev.cli, "decide", "--agent", str(agent_id), "--request", "r-while-away",
                    "--allow", "--by", str(dev.owner_id),
                )  # fmt: skip
                assert decided["delivered"] == []
                await eventually(lambda: client.connections == 2, "the reconnect")
                await eventually(lambda: bool(decisions), "the replayed decision")
                assert (await asyncio.to_thread(dev.presence, agent_id))["routing"] is True
            finally:
                stop.set()
                await asyncio.wait_for(running, STEP_TIMEOUT)

        asyncio.run(scenario())
        # The server closed it (1001 Going away): a clean close, then a reconnect.
        assert {"disconnected by the server", "connection lost (ConnectionClosedOK)"} & set(states)
        assert [d["request_id"] for d in decisions] == ["r-while-away"]
    finally:
        assert dev.stop() == 0
