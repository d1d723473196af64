"""A real @connections endpoint for delivery tests, with moto for everything else.

moto answers 200 to any post_to_connection, so Gone and partial failure are
tested against the local aiohttp server, which answers 410 for closed sockets.
The server is reached through boto3 with ``endpoint_url``; the moto
configuration below lets those local URLs through explicitly while DynamoDB and
Scheduler stay mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
import pytest
from moto import mock_aws
from moto.core.config import DefaultConfig

from agent_channel.config import settings
from agent_channel.lambda_kit import wiring
from agent_channel_dev.local.connections_api import (
    MemorySink,
    RunningServer,
    memory_connections_api,
)
from tests.support.fixtures import World, create_table
from tests.support.gateway import Gateway

if TYPE_CHECKING:
    from agent_channel.delivery.fanout import ConnectionPoster

STAGE = "test"
LOCAL_URLS = r"https?://127\.0\.0\.1:\d+/"

MOTO_CONFIG: DefaultConfig = {
    "core": {
        "mock_credentials": True,
        "passthrough": {"urls": [LOCAL_URLS], "services": []},
        "reset_boto3_session": True,
        "service_whitelist": None,
    }
}

ROUTE_MODULES = (
    "functions.replay.app",
    "functions.default.app",
    "functions.backend.app",
    "functions.stream.app",
    "functions.redeliver.app",
)


@pytest.fixture
def aws() -> Iterator[None]:
    """Overrides the shared ``aws`` fixture: the same mocks, local URLs let through."""
    with mock_aws(config=MOTO_CONFIG):
        create_table()
        boto3.client("scheduler").create_schedule_group(Name=settings().schedule_group)
        yield


@dataclass
class ManagementApi:
    sink: MemorySink
    server: RunningServer
    client: ConnectionPoster


@pytest.fixture
def management(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagementApi]:
    """A running @connections server, and the route functions pointed at it."""
    import importlib

    with memory_connections_api(stage=STAGE) as (sink, server):
        client = wiring.management_api(server.endpoint_url(STAGE))
        for name in ROUTE_MODULES:
            module = importlib.import_module(name)
            monkeypatch.setattr(module, "management", client)
        yield ManagementApi(sink, server, client)


def connect_agent(
    gateway: Gateway,
    sink: MemorySink,
    world: World,
    connection_id: str,
    *,
    agent_id: int | None = None,
    token: str | None = None,
    session_id: str = "",
) -> str:
    """Open a socket on the sink and connect it through the authorizer and $connect."""
    sink.open(connection_id)
    query = {"agent_id": str(agent_id or world.agent_id)}
    if session_id:
        query["session_id"] = session_id
    result = gateway.connect(query, token=token or world.owner_token, connection_id=connection_id)
    assert result.status == 200
    return connection_id


def connect_topic(
    gateway: Gateway,
    sink: MemorySink,
    world: World,
    connection_id: str,
    topic_id: int | None = None,
) -> str:
    sink.open(connection_id)
    result = gateway.connect(
        {"topic_id": str(topic_id or world.topic_id)},
        token=world.owner_token,
        connection_id=connection_id,
    )
    assert result.status == 200
    return connection_id
