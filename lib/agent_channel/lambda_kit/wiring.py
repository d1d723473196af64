"""The process's AWS clients and stores, built once and reused across invocations.

Handlers take what they need from here at import time (outside the handler), and
hand it to the rules explicitly. Each factory imports what it builds, so a
function pays at cold start only for the clients and modules its own route uses.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import botocore.session
from botocore.config import Config

from agent_channel.config import settings

if TYPE_CHECKING:
    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_scheduler import EventBridgeSchedulerClient

    from agent_channel.delivery.delivery_store import DynamoDeliveryBook
    from agent_channel.delivery.dynamodb import DynamoDecisionStore
    from agent_channel.delivery.fanout import GoneHandler
    from agent_channel.delivery.history_store import DynamoHistory
    from agent_channel.delivery.poster import ConnectionsPoster
    from agent_channel.delivery.split import Splitter
    from agent_channel.grace.dynamodb import DynamoTaskBook
    from agent_channel.grace.eventbridge import EventBridgeGraceScheduler
    from agent_channel.presence.dynamodb import DynamoPresenceStore
    from agent_channel.tasks.dynamodb import DynamoTaskStore
    from agent_channel.tasks.events import EventBridgeTaskEvents

# Standard retry mode retries throttling with exponential backoff and jitter.
RETRYING = Config(retries={"mode": "standard", "max_attempts": 5})


@cache
def botocore_session() -> botocore.session.Session:
    """One botocore session for every client of the process, PynamoDB's included:
    each further session loads botocore's endpoint and model data again (about 33
    ms of CPU per cold start, measured in bench/cold_start.py)."""
    return botocore.session.get_session()


def _client(service: str, **options: Any) -> Any:
    """A low-level client from the process's botocore session, retrying throttles.

    Not through boto3: its clients are botocore's, and boto3 adds nothing to a
    low-level client but its own import (with s3transfer's, about 12 ms of CPU at
    every cold start, measured in bench/cold_start.py)."""
    return botocore_session().create_client(service, config=RETRYING, **options)


@cache
def dynamodb() -> None:
    """PynamoDB's DynamoDB client, built now from the shared session.

    PynamoDB builds it on the first request, from a botocore session of its own
    (kept per thread); handing it the process's session and building it during
    init also means fan-out threads (which may reach DynamoDB through the Gone
    handler) never race to build it. Built on the base model: every record class
    inherits its connection, so no class builds a client of its own.
    """
    from agent_channel.storage.records import Record

    connection = Record._get_connection().connection
    # PynamoDB reads the session from this thread-local slot before making its own.
    connection._local.session = botocore_session()
    _ = connection.client


@cache
def presence_store() -> DynamoPresenceStore:
    from agent_channel.presence.dynamodb import DynamoPresenceStore

    dynamodb()
    return DynamoPresenceStore()


@cache
def grace_scheduler() -> EventBridgeGraceScheduler:
    from agent_channel.grace.eventbridge import EventBridgeGraceScheduler

    scheduler = cast("EventBridgeSchedulerClient", _client("scheduler"))
    return EventBridgeGraceScheduler(scheduler, settings())


@cache
def task_store() -> DynamoTaskStore:
    from agent_channel.tasks.dynamodb import DynamoTaskStore

    dynamodb()
    return DynamoTaskStore()


@cache
def task_book() -> DynamoTaskBook:
    from agent_channel.grace.dynamodb import DynamoTaskBook

    return DynamoTaskBook(task_store())


@cache
def decision_store() -> DynamoDecisionStore:
    from agent_channel.delivery.dynamodb import DynamoDecisionStore

    dynamodb()
    return DynamoDecisionStore()


@cache
def history() -> DynamoHistory:
    """Every agent stream's numbered, durable history."""
    from agent_channel.delivery.history_store import DynamoHistory

    return DynamoHistory()


@cache
def delivery_book() -> DynamoDeliveryBook:
    """Acknowledgements and redeliveries of dispatches."""
    from agent_channel.delivery.delivery_store import DynamoDeliveryBook

    return DynamoDeliveryBook()


@cache
def gone_handler() -> GoneHandler:
    """What fan-out does with a connection that answered 410: its $disconnect path."""
    from agent_channel.delivery.gone import gone_handler as bind

    return bind(presence_store(), grace_scheduler(), settings())


@cache
def management_api(endpoint_url: str | None = None) -> ConnectionsPoster:
    """The @connections client: the lean poster (delivery.poster), because fan-out
    is bound by client CPU. Its HTTP pool holds as many idle connections as
    fan-out has workers. Built without a single request: nothing is sent at init."""
    from agent_channel.delivery.poster import ConnectionsPoster, default_credentials
    from agent_channel.delivery.rate import RateBudget

    url = endpoint_url or settings().callback_url
    return ConnectionsPoster(
        url,
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        credentials=default_credentials(),
        max_idle=max(10, settings().fanout_workers),
        # A burst of one worker round, then the steady rate.
        budget=RateBudget(settings().posts_per_second, burst=settings().fanout_workers),
    )


@cache
def fanout_splitter() -> Splitter | None:
    """How a stream over FANOUT_INVOCATION_MEMBERS connections is split across
    asynchronous invocations of the fan-out worker (delivery.split); None without
    a worker function, or under an emulator (the local stack points every client
    at moto, where no Lambda runs the workers): every stream is posted in place."""
    from agent_channel.delivery.split import Splitter, lambda_invoker

    function = settings().fanout_worker_function
    if not function or os.environ.get("AWS_ENDPOINT_URL"):
        return None
    return Splitter(settings().fanout_invocation_members, lambda_invoker(lambda_client, function))


@cache
def connections_admin(endpoint_url: str | None = None) -> ApiGatewayManagementApiClient:
    """The full @connections client, for what the lean poster does not do: closing a
    socket (DELETE), for revoke_token and unregister_agent."""
    endpoint = endpoint_url or settings().callback_url
    client = _client("apigatewaymanagementapi", endpoint_url=endpoint)
    return cast("ApiGatewayManagementApiClient", client)


@cache
def lambda_client() -> LambdaClient:
    """What a sweep fans its shard workers out with (asynchronous invokes)."""
    return cast("LambdaClient", _client("lambda"))


@cache
def events_client() -> EventBridgeClient:
    return cast("EventBridgeClient", _client("events"))


@cache
def task_events() -> EventBridgeTaskEvents:
    """The publisher of task events to the backend's bus (EVENT_BUS_NAME)."""
    from agent_channel.tasks.events import EventBridgeTaskEvents

    return EventBridgeTaskEvents(events_client(), settings().event_bus_name)
