"""Events shaped exactly as API Gateway sends them to WebSocket route functions
and to a $connect REQUEST authorizer. Used by the local gateway and the tests."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

EVENT_TYPES = {"$connect": "CONNECT", "$disconnect": "DISCONNECT"}


def _request_time(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def request_context(
    route_key: str,
    connection_id: str,
    *,
    domain_name: str,
    stage: str,
    api_id: str = "local",
    authorizer: dict[str, Any] | None = None,
    connected_at: float | None = None,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    now = time.time()
    context: dict[str, Any] = {
        "routeKey": route_key,
        "eventType": EVENT_TYPES.get(route_key, "MESSAGE"),
        "extendedRequestId": uuid.uuid4().hex[:16],
        "requestTime": _request_time(now),
        "messageDirection": "IN",
        "stage": stage,
        "connectedAt": int((connected_at or now) * 1000),
        "requestTimeEpoch": int(now * 1000),
        "identity": {"sourceIp": source_ip},
        "requestId": uuid.uuid4().hex[:16],
        "domainName": domain_name,
        "connectionId": connection_id,
        "apiId": api_id,
    }
    if route_key not in EVENT_TYPES:
        context["messageId"] = uuid.uuid4().hex[:16]
    if authorizer is not None:
        context["authorizer"] = authorizer
    return context


def route_event(
    route_key: str,
    connection_id: str,
    *,
    domain_name: str = "localhost",
    stage: str = "local",
    authorizer: dict[str, Any] | None = None,
    body: str | None = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    context = request_context(
        route_key, connection_id, domain_name=domain_name, stage=stage, authorizer=authorizer
    )
    event: dict[str, Any] = {"requestContext": context, "isBase64Encoded": False}
    if route_key == "$connect":
        event["headers"] = dict(headers or {})
        event["multiValueHeaders"] = {k: [v] for k, v in (headers or {}).items()}
        if query:
            event["queryStringParameters"] = dict(query)
            event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    elif route_key == "$disconnect":
        context["disconnectStatusCode"] = 1000
        context["disconnectReason"] = ""
        event["headers"] = dict(headers or {})
    else:
        event["body"] = body
    return event


def authorizer_event(
    connection_id: str,
    *,
    domain_name: str = "localhost",
    stage: str = "local",
    api_id: str = "local",
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "type": "REQUEST",
        "methodArn": f"arn:aws:execute-api:us-east-1:000000000000:{api_id}/{stage}/$connect",
        "headers": dict(headers or {}),
        "multiValueHeaders": {k: [v] for k, v in (headers or {}).items()},
        "queryStringParameters": dict(query or {}),
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()},
        "stageVariables": {},
        "requestContext": request_context(
            "$connect", connection_id, domain_name=domain_name, stage=stage, api_id=api_id
        ),
    }


def authorizer_context_for_routes(policy: dict[str, Any]) -> dict[str, Any]:
    """What API Gateway puts in ``requestContext.authorizer`` after an Allow."""
    return {
        "principalId": policy.get("principalId", ""),
        "integrationLatency": 0,
        **(policy.get("context") or {}),
    }


def scheduled_event() -> dict[str, Any]:
    """The event an EventBridge schedule sends to a Lambda target with no input."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": "000000000000",
        "time": datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1",
        "resources": [],
        "detail": {},
    }
