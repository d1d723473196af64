"""Drive the route functions as API Gateway does: the authorizer on $connect, its
context on every later route of the connection, route selection by ``action``."""

from __future__ import annotations

import importlib
import json
import uuid
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from agent_channel import clock
from agent_channel_dev.instruments.lambda_context import LocalContext
from agent_channel_dev.local import sam_app, service_integration, stack_template
from agent_channel_dev.local.apigw_events import (
    authorizer_context_for_routes,
    authorizer_event,
    route_event,
)
from agent_channel_dev.local.gateway import select_route

# The routes exactly as template.yaml wires them.
ROUTE_FUNCTIONS = stack_template.routes()
AUTHORIZER_FUNCTION = stack_template.authorizer_function()
APP = sam_app.load(stack_template.TEMPLATE_PATH, stack_name="shim")
SERVICE_ROUTES = APP.api.services
"""Routes API Gateway serves without a function (AWS service integrations)."""
APP_TABLE = APP.resolver.physical_name("Table")


class _TestTable:
    """The integration's requests, sent to the tests' table (named by TABLE_NAME,
    not by the template's stack); the role was already checked against the
    template's own name."""

    def _make_api_call(self, operation_name: str, api_params: dict[str, Any]) -> Any:
        import boto3

        from agent_channel.storage.records import Record

        params = dict(api_params)
        if params.get("TableName") == APP_TABLE:
            params["TableName"] = Record.Meta.table_name
        client: Any = boto3.client("dynamodb")
        return client._make_api_call(operation_name, params)


def table_arn(name: str) -> str:
    return f"arn:aws:dynamodb:us-east-1:000000000000:table/{name}"


def run_service_route(
    route: str, connection_id: str, authorizer: dict[str, Any], body: str
) -> service_integration.Outcome:
    """A frame through its AWS service integration, rendered from template.yaml."""
    event = route_event(route, connection_id, authorizer=authorizer, body=body)
    request = event["requestContext"]
    context = service_integration.context_variables(
        route_key=route,
        connection_id=connection_id,
        connected_at_ms=int(request["connectedAt"]),
        # API Gateway's clock is the tests' (possibly fake) clock.
        request_time_ms=int(clock.now() * 1000),
        request_id=request["requestId"],
        message_id=str(request.get("messageId", "")),
        domain_name=str(request.get("domainName", "")),
        stage=str(request.get("stage", "")),
        api_id=str(request.get("apiId", "")),
        source_ip="127.0.0.1",
        authorizer=authorizer,
    )
    return service_integration.run(
        SERVICE_ROUTES[route], context, body, client=_TestTable(), table_arn_of=table_arn
    )


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
        route = select_route(raw, {*ROUTE_FUNCTIONS, *SERVICE_ROUTES})
        if route in SERVICE_ROUTES:
            # No function: what the client is sent back, parsed.
            outcome = run_service_route(route, connection_id, self.contexts[connection_id], raw)
            return json.loads(outcome.reply) if outcome.reply else None
        event = route_event(route, connection_id, authorizer=self.contexts[connection_id], body=raw)
        return invoke(ROUTE_FUNCTIONS[route], event)

    def beat(self, connection_id: str) -> Any:
        """A late heartbeat as the reference client sends it: a restore (renew the
        lease, or restore it if a sweep reaped it meanwhile), the Lambda path the
        heartbeat itself took before it ran without Lambda."""
        return self.send(connection_id, {"action": "restore"})

    def disconnect(self, connection_id: str) -> Any:
        event = route_event("$disconnect", connection_id, authorizer=self.contexts[connection_id])
        return invoke(ROUTE_FUNCTIONS["$disconnect"], event)
