"""The process's AWS clients and stores, built once and reused across invocations.

Each factory imports what it builds, so a function pays at cold start only for
the clients and modules its own route uses.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from agent_channel.config import settings

if TYPE_CHECKING:
    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient
    from mypy_boto3_events import EventBridgeClient

    from agent_channel.dynamo_store import DynamoPresenceStore
    from agent_channel.grace_scheduler import EventBridgeGraceScheduler
    from agent_channel.task_events import EventBridgeTaskEvents

# Standard retry mode retries throttling with exponential backoff and jitter.
RETRYING = Config(retries={"mode": "standard", "max_attempts": 5})


@cache
def presence_store() -> DynamoPresenceStore:
    from agent_channel.dynamo_store import DynamoPresenceStore

    return DynamoPresenceStore(settings())


@cache
def grace_scheduler() -> EventBridgeGraceScheduler:
    from agent_channel.grace_scheduler import EventBridgeGraceScheduler

    return EventBridgeGraceScheduler(boto3.client("scheduler", config=RETRYING), settings())


@cache
def management_api(endpoint_url: str | None = None) -> ApiGatewayManagementApiClient:
    """The @connections client. A large pool, because fan-out posts concurrently."""
    url = endpoint_url or settings().callback_url
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=url,
        config=Config(
            max_pool_connections=max(10, settings().fanout_workers),
            # One attempt: broadcast retries throttling itself (with jitter, counted
            # as ThrottleRetries); botocore's max_attempts would add a hidden retry.
            retries={"mode": "standard", "total_max_attempts": 1},
            # The requests are built here, from typed values: validating each of
            # a thousand posts costs client CPU that fan-out is bound by.
            parameter_validation=False,
        ),
    )


@cache
def events_client() -> EventBridgeClient:
    return boto3.client("events", config=RETRYING)


@cache
def task_events() -> EventBridgeTaskEvents:
    """The publisher of task events to the backend's bus (EVENT_BUS_NAME)."""
    from agent_channel.task_events import EventBridgeTaskEvents

    return EventBridgeTaskEvents(events_client(), settings().event_bus_name)
