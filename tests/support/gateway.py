"""Drive the route functions as API Gateway does: the authorizer on $connect, its
context on every later route of the connection, route selection by ``action``."""

from __future__ import annotations

import importlib
import json
import uuid
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from agent_channel_dev.instruments.lambda_context import LocalContext
from agent_channel_dev.local import stack_template
from agent_channel_dev.local.apigw_events import (
    authorizer_context_for_routes,
    authorizer_event,
    route_event,
)
from agent_channel_dev.local.gateway import select_route

# The routes exactly as template.yaml wires them.
ROUTE_FUNCTIONS = stack_template.routes()
AUTHORIZER_FUNCTION = stack_template.authorizer_function()


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
                AUTHORIZER_FUNCTION,
                authorizer_event(connection_id, headers=headers, query=full_query),
            )
        except PermissionError:
            return Connected(401, connection_id)
        if policy["policyDocument"]["Statement"][0]["Effect"] != "Allow":
            return Connected(403, connection_id)
        context = authorizer_context_for_routes(policy)
        result = invoke(
            ROUTE_FUNCTIONS["$connect"],
            route_event(
                "$connect", connection_id, authorizer=context, headers=headers, query=full_query
            ),
        )
        if result["statusCode"] == 200:
            self.contexts[connection_id] = context
        return Connected(result["statusCode"], connection_id)

    def send(self, connection_id: str, body: Any) -> Any:
        raw = body if isinstance(body, str) else json.dumps(body)
        route = select_route(raw, ROUTE_FUNCTIONS)
        event = route_event(route, connection_id, authorizer=self.contexts[connection_id], body=raw)
        return invoke(ROUTE_FUNCTIONS[route], event)

    def disconnect(self, connection_id: str) -> Any:
        event = route_event("$disconnect", connection_id, authorizer=self.contexts[connection_id])
        return invoke(ROUTE_FUNCTIONS["$disconnect"], event)
