"""The local gateway end to end: the upgrade's answers, dispatch to every session,
routing as sessions come and go, grace cancellation, and a frozen plugin reaped by
staleness and the sweeper. Real processes, a real WebSocket client, nothing mocked."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import boto3
import pytest
import websockets
from botocore.exceptions import ClientError

from tests.e2e.stack import (
    GRACE_SECONDS,
    IDLE_TIMEOUT_SECONDS,
    STALE_AFTER_SECONDS,
    AgentProcess,
    DevServer,
    wait_until,
)

pytestmark = pytest.mark.e2e

AgentFactory = Callable[..., AgentProcess]


def upgrade_status(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status the gateway answers a WebSocket upgrade with (101 = accepted)."""

    async def attempt() -> int:
        try:
            async with websockets.connect(url, additional_headers=headers, open_timeout=10):
                return 101
        except websockets.InvalidStatus as refused:
            return int(refused.response.status_code)

    return asyncio.run(attempt())


def management(dev: DevServer) -> object:
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=dev.callback_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def test_the_upgrade_is_refused_without_a_valid_token_or_target(dev: DevServer) -> None:
    agent = f"{dev.ws_url}?agent_id={dev.agent_id}&session_id=s"
    assert upgrade_status(agent + "&token=act_not-a-token") == 401
    assert upgrade_status(agent) == 401
    assert upgrade_status(f"{dev.ws_url}?token={dev.token}") == 400
    assert upgrade_status(f"{dev.ws_url}?agent_id=x1&token={dev.token}") == 400
    stranger = dev.cli("create-user", "mallory")["user_id"]
    stranger_token = dev.cli("issue-token", "--user", str(stranger))["token"]
    assert upgrade_status(agent, {"Authorization": f"Bearer {stranger_token}"}) == 403
    assert upgrade_status(agent, {"Authorization": f"Bearer {dev.token}"}) == 101
    assert dev.cli("revoke-token", "--token", stranger_token)["revoked"] is True
    assert upgrade_status(agent + f"&token={stranger_token}") == 401


def test_dispatch_reaches_every_session_and_the_last_one_out_clears_routing(
    dev: DevServer, agents: AgentFactory
) -> None:
    agent_id, topic_id = dev.new_agent("two-sessions")
    first, second = agents(agent_id, "first"), agents(agent_id, "second")
    assert dev.presence(agent_id)["live_sessions"] == 2

    task_id = dev.dispatch(agent_id, topic_id, "review the plan")
    for session in (first, second):
        message = session.wait_for("dispatch", task_id=task_id)
        assert message["comment"]["content"] == "review the plan"

    first.stop(signal.SIGTERM)  # a clean close frame
    presence = wait_until(
        lambda: (p := dev.presence(agent_id))["live_sessions"] == 1 and p, 10, "one lease left"
    )
    assert presence["routing"] is True
    assert dev.task_status(agent_id, task_id) == "delegated"

    second.kill()  # SIGKILL: no close frame, the TCP connection just drops
    wait_until(lambda: not dev.presence(agent_id)["routing"], 10, "routing to clear")
    wait_until(
        lambda: dev.task_status(agent_id, task_id) == "cancelled",
        GRACE_SECONDS + 10,
        "the grace cancellation",
    )


def test_a_reconnect_inside_the_grace_keeps_the_task(dev: DevServer, agents: AgentFactory) -> None:
    agent_id, topic_id = dev.new_agent("comes-back")
    session = agents(agent_id, "only")
    task_id = dev.dispatch(agent_id, topic_id, "keep me")
    session.wait_for("dispatch", task_id=task_id)

    session.stop(signal.SIGTERM)
    wait_until(lambda: not dev.presence(agent_id)["routing"], 10, "routing to clear")
    agents(agent_id, "only")  # the same session, back within the grace
    assert dev.presence(agent_id)["routing"] is True

    time.sleep(GRACE_SECONDS + 3)  # past the grace and at least two scheduler ticks
    assert dev.task_status(agent_id, task_id) == "delegated"


def test_a_frozen_plugin_is_reaped_by_staleness_and_the_sweeper(
    dev: DevServer, agents: AgentFactory
) -> None:
    agent_id, topic_id = dev.new_agent("freezes")
    session = agents(agent_id, "frozen")
    task_id = dev.dispatch(agent_id, topic_id, "then hang")
    session.wait_for("dispatch", task_id=task_id)
    connection_id = dev.presence(agent_id)["leases"][0]["connection_id"]

    # SIGSTOP: the process stops heartbeating but its TCP connection stays open,
    # so no $disconnect comes. Only staleness and the sweeper can notice.
    session.stop(signal.SIGSTOP)
    wait_until(lambda: not dev.presence(agent_id)["routing"], STALE_AFTER_SECONDS + 8, "the sweep")
    api = management(dev)
    # The socket is still open: it was the sweeper, not a $disconnect, that acted.
    assert api.get_connection(ConnectionId=connection_id)  # type: ignore[attr-defined]
    wait_until(
        lambda: dev.task_status(agent_id, task_id) == "cancelled",
        GRACE_SECONDS + 10,
        "the grace cancellation",
    )

    # Later the idle timeout closes the socket (API Gateway never pings): a stale
    # $disconnect that changes nothing.
    def gone() -> bool:
        try:
            api.get_connection(ConnectionId=connection_id)  # type: ignore[attr-defined]
        except ClientError as error:
            return error.response["Error"]["Code"] == "GoneException"
        return False

    wait_until(gone, IDLE_TIMEOUT_SECONDS + 5, "the idle timeout to close the socket")
    assert dev.presence(agent_id)["routing"] is False
    session.kill()


def test_the_agent_command_replays_its_pending_requests_on_connect(
    dev: DevServer, agents: AgentFactory
) -> None:
    agent_id, _ = dev.new_agent("replays")
    decided = dev.cli(
        "decide",
        "--agent",
        str(agent_id),
        "--request",
        "perm-7",
        "--allow",
        "--by",
        str(dev.owner_id),
    )
    assert decided["delivered"] == []  # nobody connected: recorded, not delivered

    session = agents(agent_id, "s", "--pending", "perm-7,perm-8")
    message = session.wait_for("permission_decision", request_id="perm-7")
    assert message == {
        "type": "permission_decision",
        "request_id": "perm-7",
        "behavior": "allow",
        "agent_id": agent_id,
        "decided_by": dev.owner_id,
    }
    time.sleep(1)
    assert [m["request_id"] for m in session.received()] == ["perm-7"]  # perm-8: undecided


def test_unregistering_closes_the_sessions_and_refuses_them_back(
    dev: DevServer, agents: AgentFactory
) -> None:
    agent_id, topic_id = dev.new_agent("unregistered")
    session = agents(agent_id, "only")
    task_id = dev.dispatch(agent_id, topic_id, "about to be taken away")
    session.wait_for("dispatch", task_id=task_id)

    answer = dev.cli("unregister-agent", "--agent", str(agent_id), "--as-user", str(dev.owner_id))

    assert answer["cancelled"] == [task_id]
    assert len(answer["closed_connections"]) == 1
    # Closed through @connections DELETE; its reconnect is refused with 403, on
    # which the reference client stops instead of retrying.
    wait_until(lambda: session.process.poll() is not None, 30, "the agent to give up")
    assert any("403" in line for line in session.errors.lines), list(session.errors.lines)
    assert dev.task_status(agent_id, task_id) == "cancelled"
    presence = dev.presence(agent_id)
    assert presence["routing"] is False and presence["leases"] == []
