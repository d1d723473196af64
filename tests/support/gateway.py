"""Drive the route functions as API Gateway does: the authorizer on $connect, its
context on every later route of the connection, route selection by ``action``."""

from __future__ import annotations

import importlib
import json
import uuid
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from agent_channel.handler_kit import LocalContext
from agent_channel.local.apigw_events import (
    authorizer_context_for_routes,
    authorizer_event,
    route_event,
)

ROUTE_FUNCTIONS = {
    "$connect": "connect",
    "$disconnect": "disconnect",
    "heartbeat": "heartbeat",
    "replay_permissions": "replay",
    "$default": "default",
}


def function(name: str) -> ModuleType:
    return importlib.import_module(f"functions.{name}.app")


def invoke(name: str, event: Any) -> Any:
    return function(name).handler(event, LocalContext(function_name=name))


@dataclass
class Connected:
    status: int
    connection_id: str


@dataclass
class Gateway:
    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def connect(
        self,
        query: dict[str, str],
        *,
        token: str | None = None,
        header_token: str | None = None,
        connection_id: str | None = None,
    ) -> Connected:
        connection_id = connection_id or uuid.uuid4().hex[:12] + "="
        headers = {"Authorization": f"Bearer {header_token}"} if header_token else {}
        full_query = dict(query)
        if token is not None:
            full_query["token"] = token
        try:
            policy = invoke(
                "authorize", authorizer_event(connection_id, headers=headers, query=full_query)
            )
        except PermissionError:
            return Connected(401, connection_id)
        if policy["policyDocument"]["Statement"][0]["Effect"] != "Allow":
            return Connected(403, connection_id)
        context = authorizer_context_for_routes(policy)
        result = invoke(
            "connect",
            route_event(
                "$connect", connection_id, authorizer=context, headers=headers, query=full_query
            ),
        )
        if result["statusCode"] == 200:
            self.contexts[connection_id] = context
        return Connected(result["statusCode"], connection_id)

    def send(self, connection_id: str, body: Any) -> Any:
        raw = body if isinstance(body, str) else json.dumps(body)
        try:
            action = json.loads(raw).get("action")
        except (ValueError, AttributeError):
            action = None
        route = action if action in ROUTE_FUNCTIONS and not action.startswith("$") else "$default"
        event = route_event(route, connection_id, authorizer=self.contexts[connection_id], body=raw)
        return invoke(ROUTE_FUNCTIONS[route], event)

    def disconnect(self, connection_id: str) -> Any:
        event = route_event(
            "$disconnect", connection_id, authorizer=self.contexts[connection_id]
        )
        return invoke("disconnect", event)
