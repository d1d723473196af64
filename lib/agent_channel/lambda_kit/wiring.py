"""The process's AWS clients and stores, built once and reused across invocations.

Handlers take what they need from here at import time (outside the handler), and
hand it to the rules explicitly. Each factory imports what it builds, so a
function pays at cold start only for the clients and modules its own route uses.
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
    from mypy_boto3_lambda import LambdaClient

    from agent_channel.delivery.dynamodb import DynamoDecisionStore
    from agent_channel.delivery.fanout import GoneHandler
    from agent_channel.grace.dynamodb import DynamoTaskBook
    from agent_channel.grace.eventbridge import EventBridgeGraceScheduler
    from agent_channel.presence.dynamodb import DynamoPresenceStore
    from agent_channel.tasks.dynamodb import DynamoTaskStore
    from agent_channel.tasks.events import EventBridgeTaskEvents

# Standard retry mode retries throttling with exponential backoff and jitter.
RETRYING = Config(retries={"mode": "standard", "max_attempts": 5})


@cache
def presence_store() -> DynamoPresenceStore:
    from agent_channel.presence.dynamodb import DynamoPresenceStore

    return DynamoPresenceStore()


@cache
def grace_scheduler() -> EventBridgeGraceScheduler:
    from agent_channel.grace.eventbridge import EventBridgeGraceScheduler

    return EventBridgeGraceScheduler(boto3.client("scheduler", config=RETRYING), settings())


@cache
def task_store() -> DynamoTaskStore:
    from agent_channel.tasks.dynamodb import DynamoTaskStore

    return DynamoTaskStore()


@cache
def task_book() -> DynamoTaskBook:
    from agent_channel.grace.dynamodb import DynamoTaskBook

    return DynamoTaskBook(task_store())


@cache
def decision_store() -> DynamoDecisionStore:
    from agent_channel.delivery.dynamodb import DynamoDecisionStore

    return DynamoDecisionStore()


@cache
def gone_handler() -> GoneHandler:
    """What fan-out does with a connection that answered 410: its $disconnect path."""
    from agent_channel.delivery.gone import gone_handler as bind

    return bind(presence_store(), grace_scheduler(), settings())


@cache
def management_api(endpoint_url: str | None = None) -> ApiGatewayManagementApiClient:
    """The @connections client. A large pool, because fan-out posts concurrently."""
    url = endpoint_url or settings().callback_url
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=url,
        config=Config(
            max_pool_connections=max(10, settings().fanout_workers),
            # One attempt: fan-out retries throttling itself (with jitter, counted
            # as ThrottleRetries); botocore's max_attempts would add a hidden retry.
            retries={"mode": "standard", "total_max_attempts": 1},
            # The requests are built here, from typed values: validating each of
            # a thousand posts costs client CPU that fan-out is bound by.
            parameter_validation=False,
        ),
    )


@cache
def lambda_client() -> LambdaClient:
    """What a sweep fans its shard workers out with (asynchronous invokes)."""
    return boto3.client("lambda", config=RETRYING)


@cache
def events_client() -> EventBridgeClient:
    return boto3.client("events", config=RETRYING)


@cache
def task_events() -> EventBridgeTaskEvents:
    """The publisher of task events to the backend's bus (EVENT_BUS_NAME)."""
    from agent_channel.tasks.events import EventBridgeTaskEvents

    return EventBridgeTaskEvents(events_client(), settings().event_bus_name)
