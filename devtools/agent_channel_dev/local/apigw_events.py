"""Events shaped exactly as API Gateway sends them to WebSocket route functions
and to a $connect REQUEST authorizer. Used by the local gateway and the tests;
every shape here is checked against Powertools' parser models in the suite.

What API Gateway puts in them (and so what is put here): the upgrade's headers
without the hop-by-hop ``Connection``/``Upgrade``, plus ``X-Amzn-Trace-Id`` and
``X-Forwarded-For/Port/Proto``; every value of a repeated query parameter in
``multiValueQueryStringParameters`` and the last one in
``queryStringParameters``; base64-like request and message ids; a
``domainName`` without a port; ``connectedAt`` fixed for the connection's life;
and on ``$disconnect`` the headers API Gateway sends there, with the close
status and reason.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

EVENT_TYPES = {"$connect": "CONNECT", "$disconnect": "DISCONNECT"}
HOP_BY_HOP = frozenset({"connection", "upgrade"})
DEFAULT_DOMAIN = "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com"

NO_STATUS = 1005
NO_STATUS_REASON = "Client-side close frame status not set"


def _request_time(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")


def new_request_id() -> str:
    """Shaped like API Gateway's request and message ids (``Xk3bC2EfIAMF7Q=``)."""
    return base64.b64encode(secrets.token_bytes(11)).decode().replace("/", "_").replace("+", "-")


def trace_header(now: float | None = None) -> str:
    """An X-Ray trace header as API Gateway adds one."""
    return f"Root=1-{int(now or time.time()):08x}-{secrets.token_hex(12)}"


Pairs = Iterable[tuple[str, str]]


def _multi(pairs: Pairs) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped


def _pairs(values: Mapping[str, str] | Pairs | None) -> list[tuple[str, str]]:
    if values is None:
        return []
    if isinstance(values, Mapping):
        return [(str(k), str(v)) for k, v in values.items()]
    return [(str(k), str(v)) for k, v in values]


@dataclass(frozen=True)
class Upgrade:
    """The client's upgrade request, as API Gateway passes it on."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    query: list[tuple[str, str]] = field(default_factory=list)
    source_ip: str = "127.0.0.1"
    domain_name: str = DEFAULT_DOMAIN
    trace_id: str = field(default_factory=trace_header)

    @classmethod
    def of(
        cls,
        headers: Mapping[str, str] | Pairs | None = None,
        query: Mapping[str, str] | Pairs | None = None,
        **kwargs: Any,
    ) -> Upgrade:
        return cls(_pairs(headers), _pairs(query), **kwargs)

    def header_pairs(self) -> list[tuple[str, str]]:
        kept = [
            (name, value)
            for name, value in self.headers
            if name.lower() not in HOP_BY_HOP | {"host", "x-forwarded-for"}
        ]
        added = [
            ("Host", self.domain_name),
            ("X-Amzn-Trace-Id", self.trace_id),
            ("X-Forwarded-For", self.source_ip),
            ("X-Forwarded-Port", "443"),
            ("X-Forwarded-Proto", "https"),
        ]
        return sorted([*kept, *added], key=lambda pair: pair[0].lower())

    def headers_map(self) -> dict[str, str]:
        return {name: values[-1] for name, values in _multi(self.header_pairs()).items()}

    def user_agent(self) -> str:
        return next((v for k, v in self.headers if k.lower() == "user-agent"), "")

    def query_fields(self) -> dict[str, Any]:
        if not self.query:
            return {}
        multi = _multi(self.query)
        return {
            "queryStringParameters": {name: values[-1] for name, values in multi.items()},
            "multiValueQueryStringParameters": multi,
        }


def request_context(
    route_key: str,
    connection_id: str,
    *,
    domain_name: str = DEFAULT_DOMAIN,
    stage: str = "local",
    api_id: str | None = None,
    authorizer: dict[str, Any] | None = None,
    connected_at: float | None = None,
    source_ip: str = "127.0.0.1",
    user_agent: str | None = None,
) -> dict[str, Any]:
    now = time.time()
    request_id = new_request_id()
    identity: dict[str, Any] = {"sourceIp": source_ip}
    if user_agent is not None:
        identity["userAgent"] = user_agent
    context: dict[str, Any] = {
        "routeKey": route_key,
        "eventType": EVENT_TYPES.get(route_key, "MESSAGE"),
        "extendedRequestId": request_id,
        "requestTime": _request_time(now),
        "messageDirection": "IN",
        "stage": stage,
        "connectedAt": int((connected_at or now) * 1000),
        "requestTimeEpoch": int(now * 1000),
        "identity": identity,
        "requestId": request_id,
        "domainName": domain_name,
        "connectionId": connection_id,
        "apiId": api_id or domain_name.split(".", 1)[0],
    }
    if route_key not in EVENT_TYPES:
        context["messageId"] = new_request_id()
    if authorizer is not None:
        context["authorizer"] = authorizer
    return context


def disconnect_headers(domain_name: str) -> dict[str, str]:
    """What API Gateway sends as ``$disconnect``'s headers (no client is left to ask)."""
    return {"Host": domain_name, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""}


def route_event(
    route_key: str,
    connection_id: str,
    *,
    domain_name: str = DEFAULT_DOMAIN,
    stage: str = "local",
    api_id: str | None = None,
    authorizer: dict[str, Any] | None = None,
    body: str | None = None,
    headers: Mapping[str, str] | Pairs | None = None,
    query: Mapping[str, str] | Pairs | None = None,
    upgrade: Upgrade | None = None,
    connected_at: float | None = None,
    source_ip: str = "127.0.0.1",
    status_code: int = 1000,
    reason: str = "",
) -> dict[str, Any]:
    """The event of ``route_key``; ``$connect`` reads ``upgrade`` (or headers/query)."""
    if route_key == "$connect":
        upgrade = upgrade or Upgrade.of(
            headers, query, source_ip=source_ip, domain_name=domain_name
        )
        source_ip = upgrade.source_ip
    context = request_context(
        route_key,
        connection_id,
        domain_name=domain_name,
        stage=stage,
        api_id=api_id,
        authorizer=authorizer,
        connected_at=connected_at,
        source_ip=source_ip,
        user_agent=upgrade.user_agent() if upgrade else None,
    )
    event: dict[str, Any] = {"requestContext": context, "isBase64Encoded": False}
    if upgrade is not None:
        pairs = upgrade.header_pairs()
        event["headers"] = upgrade.headers_map()
        event["multiValueHeaders"] = _multi(pairs)
        event.update(upgrade.query_fields())
    elif route_key == "$disconnect":
        context["disconnectStatusCode"] = status_code
        context["disconnectReason"] = reason
        event["headers"] = disconnect_headers(domain_name)
        event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    else:
        event["body"] = body
    return event


def authorizer_event(
    connection_id: str,
    *,
    domain_name: str = DEFAULT_DOMAIN,
    stage: str = "local",
    api_id: str | None = None,
    headers: Mapping[str, str] | Pairs | None = None,
    query: Mapping[str, str] | Pairs | None = None,
    upgrade: Upgrade | None = None,
    connected_at: float | None = None,
) -> dict[str, Any]:
    upgrade = upgrade or Upgrade.of(headers, query, domain_name=domain_name)
    api = api_id or domain_name.split(".", 1)[0]
    query_fields = upgrade.query_fields()
    return {
        "type": "REQUEST",
        "methodArn": f"arn:aws:execute-api:us-east-1:000000000000:{api}/{stage}/$connect",
        "headers": upgrade.headers_map(),
        "multiValueHeaders": _multi(upgrade.header_pairs()),
        "queryStringParameters": query_fields.get("queryStringParameters", {}),
        "multiValueQueryStringParameters": query_fields.get("multiValueQueryStringParameters", {}),
        "stageVariables": {},
        "requestContext": request_context(
            "$connect",
            connection_id,
            domain_name=domain_name,
            stage=stage,
            api_id=api,
            connected_at=connected_at,
            source_ip=upgrade.source_ip,
            user_agent=upgrade.user_agent(),
        ),
    }


def authorizer_context_for_routes(
    policy: dict[str, Any], integration_latency_ms: int = 0
) -> dict[str, Any]:
    """What API Gateway puts in ``requestContext.authorizer`` after an Allow."""
    return {
        "principalId": policy.get("principalId", ""),
        "integrationLatency": integration_latency_ms,
        **(policy.get("context") or {}),
    }


def error_frame(message: str, connection_id: str, request_id: str) -> str:
    """What API Gateway sends a client whose message could not be handled
    (``Internal server error``, ``Forbidden``, ``Endpoint request timed out``)."""
    import json

    return json.dumps({"message": message, "connectionId": connection_id, "requestId": request_id})


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
