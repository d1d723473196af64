"""A SAM WebSocket application, read from its template alone.

Everything the local stack serves comes from here: the WebSocket API (route
selection expression, routes through their integrations, the ``$connect``
authorizer and its identity sources, the stage), each function (code folder,
handler, runtime environment with Globals merged, Timeout, MemorySize, layers,
IAM statements, rate schedules) and the resources the stack's moto must hold
(tables, queues, event buses, schedule groups). Nothing is specific to
agent-channel: any Python SAM WebSocket app's template reads the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_channel_dev.local.intrinsics import REGION, URL_SUFFIX, Resolver
from agent_channel_dev.local.service_integration import (
    IntegrationResponse,
    ServiceIntegration,
    parse_uri,
)
from agent_channel_dev.local.stack_template import (
    TemplateError,
    create_table_kwargs,
    load_template_text,
    referenced_ids,
)

FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
LAYER_TYPE = "AWS::Serverless::LayerVersion"
API_TYPE = "AWS::ApiGatewayV2::Api"
ROUTE_TYPE = "AWS::ApiGatewayV2::Route"
INTEGRATION_TYPE = "AWS::ApiGatewayV2::Integration"
AUTHORIZER_TYPE = "AWS::ApiGatewayV2::Authorizer"
INTEGRATION_RESPONSE_TYPE = "AWS::ApiGatewayV2::IntegrationResponse"
ROUTE_RESPONSE_TYPE = "AWS::ApiGatewayV2::RouteResponse"
STAGE_TYPE = "AWS::ApiGatewayV2::Stage"

DEFAULT_TIMEOUT_SECONDS = 3
"""Lambda's default when neither the function nor Globals give a Timeout."""
DEFAULT_MEMORY_MB = 128
DEFAULT_ROUTE_SELECTION = "$request.body.action"

_RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")
_RATE_UNITS = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    name: str
    """The physical function name (what its ARN ends with)."""
    code_dir: Path
    handler: str
    runtime: str
    environment: dict[str, str]
    """Exactly the template's variables (Globals merged), resolved."""
    timeout_seconds: float
    memory_mb: int
    layer_dirs: tuple[Path, ...]
    statements: tuple[dict[str, Any], ...]
    """The IAM statements of its inline ``Policies``, resolved."""
    rate_seconds: float | None = None
    """Its ``rate(...)`` schedule event, if it has one."""


@dataclass(frozen=True)
class Authorizer:
    function: str
    """Logical id of the authorizer's function."""
    identity_sources: tuple[str, ...]
    """``route.request.header.NAME`` / ``route.request.querystring.NAME``."""


@dataclass(frozen=True)
class WebSocketApi:
    logical_id: str
    api_id: str
    stage: str
    route_selection_expression: str
    routes: dict[str, str]
    """Route key -> logical id of the function its integration invokes."""
    authorizer: Authorizer | None
    """The ``$connect`` route's REQUEST authorizer (None: AuthorizationType NONE)."""
    services: dict[str, ServiceIntegration] = field(default_factory=dict)
    """Route key -> its AWS service integration (IntegrationType AWS: no function)."""
    two_way: frozenset[str] = frozenset()
    """Route keys with a route response: what the integration answers goes to the
    client (a proxy integration's ``body``)."""

    @property
    def route_keys(self) -> set[str]:
        return set(self.routes) | set(self.services)

    @property
    def domain_name(self) -> str:
        return f"{self.api_id}.execute-api.{REGION}.{URL_SUFFIX}"


@dataclass(frozen=True)
class Table:
    logical_id: str
    create_kwargs: dict[str, Any]
    ttl_attribute: str


@dataclass
class SamApp:
    path: Path
    resolver: Resolver
    api: WebSocketApi
    functions: dict[str, FunctionSpec]
    tables: list[Table] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    event_buses: list[str] = field(default_factory=list)
    schedule_groups: list[str] = field(default_factory=list)

    def function_by_name(self, name: str) -> FunctionSpec:
        """The function a name or ARN (``...:function:NAME[:QUALIFIER]``) refers to."""
        parts = name.split(":")
        if len(parts) >= 7 and parts[5] == "function":
            name = parts[6]
        for spec in self.functions.values():
            if name in (spec.name, spec.logical_id):
                return spec
        raise TemplateError(f"no function named {name!r} in {self.path}")

    def function_by_code_folder(self, folder: str) -> FunctionSpec | None:
        for spec in self.functions.values():
            if spec.code_dir.name == folder:
                return spec
        return None


def load(
    path: Path,
    *,
    stack_name: str,
    parameters: dict[str, str] | None = None,
    stage: str | None = None,
) -> SamApp:
    document = load_template_text(path.read_text(encoding="utf-8"))
    chosen = dict(parameters or {})
    if stage is not None:
        # A stage named by a parameter: the override goes through the parameter,
        # so every ${StageName} (a callback URL, an IAM resource) agrees with it.
        for resource in (document.get("Resources") or {}).values():
            name = ((resource or {}).get("Properties") or {}).get("StageName")
            parameter = name.get("Ref") if isinstance(name, dict) else None
            if (resource or {}).get("Type") == STAGE_TYPE and parameter in (
                document.get("Parameters") or {}
            ):
                chosen.setdefault(str(parameter), stage)
    resolver = Resolver(document, stack_name, chosen)
    root = path.resolve().parent
    functions = {
        logical_id: _function(resolver, root, logical_id, document)
        for logical_id in _of_types(resolver, FUNCTION_TYPES)
    }
    app = SamApp(
        path=path,
        resolver=resolver,
        api=_api(resolver, functions, stage),
        functions=functions,
    )
    for logical_id in _of_types(resolver, ("AWS::DynamoDB::Table",)):
        properties = resolver.resolve(_properties(resolver, logical_id))
        ttl = properties.get("TimeToLiveSpecification") or {}
        app.tables.append(
            Table(
                logical_id,
                create_table_kwargs(resolver.physical_name(logical_id), properties),
                str(ttl.get("AttributeName", "")) if ttl.get("Enabled") else "",
            )
        )
    for logical_id in _of_types(resolver, ("AWS::Serverless::SimpleTable",)):
        properties = resolver.resolve(_properties(resolver, logical_id))
        key = properties.get("PrimaryKey") or {"Name": "id", "Type": "String"}
        kind = {"String": "S", "Number": "N", "Binary": "B"}[key.get("Type", "String")]
        app.tables.append(
            Table(
                logical_id,
                {
                    "TableName": resolver.physical_name(logical_id),
                    "AttributeDefinitions": [{"AttributeName": key["Name"], "AttributeType": kind}],
                    "KeySchema": [{"AttributeName": key["Name"], "KeyType": "HASH"}],
                    "BillingMode": "PAY_PER_REQUEST",
                },
                "",
            )
        )
    app.queues = [resolver.physical_name(q) for q in _of_types(resolver, ("AWS::SQS::Queue",))]
    app.event_buses = [
        resolver.physical_name(b) for b in _of_types(resolver, ("AWS::Events::EventBus",))
    ]
    app.schedule_groups = [
        resolver.physical_name(g) for g in _of_types(resolver, ("AWS::Scheduler::ScheduleGroup",))
    ]
    return app


def _of_types(resolver: Resolver, kinds: tuple[str, ...]) -> list[str]:
    return [
        logical_id
        for logical_id, resource in resolver.resources.items()
        if isinstance(resource, dict) and resource.get("Type") in kinds
    ]


def _properties(resolver: Resolver, logical_id: str) -> dict[str, Any]:
    properties = resolver.resources[logical_id].get("Properties") or {}
    if not isinstance(properties, dict):
        raise TemplateError(f"{logical_id}: Properties must be a mapping")
    return properties


def _merged(defaults: Any, own: Any) -> Any:
    """SAM's Globals rule: maps merge, lists append, scalars are overridden."""
    if isinstance(defaults, dict) and isinstance(own, dict):
        merged = dict(defaults)
        for key, value in own.items():
            merged[key] = _merged(defaults[key], value) if key in defaults else value
        return merged
    if isinstance(defaults, list) and isinstance(own, list):
        return [*defaults, *own]
    return own


def _function(
    resolver: Resolver, root: Path, logical_id: str, document: dict[str, Any]
) -> FunctionSpec:
    own = _properties(resolver, logical_id)
    globals_ = (
        ((document.get("Globals") or {}).get("Function") or {})
        if _is_sam(resolver, logical_id)
        else {}
    )
    properties = _merged(globals_, own)
    code_uri = properties.get("CodeUri")
    if not isinstance(code_uri, str):
        raise TemplateError(f"{logical_id}: CodeUri must be a local folder")
    handler = properties.get("Handler")
    if not isinstance(handler, str) or "." not in handler:
        raise TemplateError(f"{logical_id}: Handler must be MODULE.FUNCTION")
    runtime = str(properties.get("Runtime", ""))
    if runtime and not runtime.startswith("python3"):
        raise TemplateError(f"{logical_id}: only Python runtimes are served, not {runtime}")
    variables = resolver.resolve((properties.get("Environment") or {}).get("Variables") or {})
    layers = []
    for layer in properties.get("Layers") or []:
        for ref in referenced_ids(layer):
            if resolver.type_of(ref) == LAYER_TYPE:
                content = (root / str(_properties(resolver, ref).get("ContentUri", ""))).resolve()
                layers.append(content / "python" if (content / "python").is_dir() else content)
    statements: list[dict[str, Any]] = []
    for policy in properties.get("Policies") or []:
        if isinstance(policy, dict) and "Statement" in policy:
            statements.extend(resolver.resolve(policy["Statement"]))
    rate = None
    for event in (properties.get("Events") or {}).values():
        if isinstance(event, dict) and event.get("Type") in ("Schedule", "ScheduleV2"):
            found = _RATE.match(str((event.get("Properties") or {}).get("ScheduleExpression")))
            if found:
                rate = float(int(found.group(1)) * _RATE_UNITS[found.group(2).rstrip("s")])
    return FunctionSpec(
        logical_id=logical_id,
        name=resolver.physical_name(logical_id),
        code_dir=(root / code_uri).resolve(),
        handler=handler,
        runtime=runtime or "python3.12",
        environment={str(k): _env_text(v) for k, v in variables.items()},
        timeout_seconds=float(resolver.resolve(properties.get("Timeout", DEFAULT_TIMEOUT_SECONDS))),
        memory_mb=int(resolver.resolve(properties.get("MemorySize", DEFAULT_MEMORY_MB))),
        layer_dirs=tuple(layers),
        statements=tuple(statements),
        rate_seconds=rate,
    )


def _is_sam(resolver: Resolver, logical_id: str) -> bool:
    return resolver.type_of(logical_id).startswith("AWS::Serverless::")


def _env_text(value: Any) -> str:
    # Lambda's environment holds strings; CloudFormation turns numbers and booleans
    # into their text ("15", "true").
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _integration_function(
    resolver: Resolver, functions: dict[str, FunctionSpec], value: Any, where: str
) -> str:
    named = [name for name in referenced_ids(value) if name in functions]
    if len(named) != 1:
        raise TemplateError(f"{where}: expected one function in {value!r}, found {named}")
    return named[0]


def _api(resolver: Resolver, functions: dict[str, FunctionSpec], stage: str | None) -> WebSocketApi:
    apis = [
        logical_id
        for logical_id in _of_types(resolver, (API_TYPE,))
        if _properties(resolver, logical_id).get("ProtocolType") == "WEBSOCKET"
    ]
    if len(apis) != 1:
        raise TemplateError(f"expected one WebSocket API, found {len(apis)}")
    (api,) = apis
    api_properties = _properties(resolver, api)

    def belongs(logical_id: str) -> bool:
        return api in referenced_ids(_properties(resolver, logical_id).get("ApiId"))

    integrations = {i for i in _of_types(resolver, (INTEGRATION_TYPE,)) if belongs(i)}
    authorizers = {a for a in _of_types(resolver, (AUTHORIZER_TYPE,)) if belongs(a)}
    routes: dict[str, str] = {}
    services: dict[str, ServiceIntegration] = {}
    two_way: set[str] = set()
    authorizer: Authorizer | None = None
    for logical_id in _of_types(resolver, (ROUTE_TYPE,)):
        if not belongs(logical_id):
            continue
        properties = _properties(resolver, logical_id)
        route_key = resolver.resolve(properties.get("RouteKey"))
        targets = [n for n in referenced_ids(properties.get("Target")) if n in integrations]
        if not isinstance(route_key, str) or len(targets) != 1:
            raise TemplateError(f"{logical_id}: needs a RouteKey and one integration Target")
        if properties.get("RouteResponseSelectionExpression") and any(
            logical_id in referenced_ids(_properties(resolver, response).get("RouteId"))
            for response in _of_types(resolver, (ROUTE_RESPONSE_TYPE,))
        ):
            two_way.add(route_key)
        integration = _properties(resolver, targets[0])
        if integration.get("IntegrationType") == "AWS":
            services[route_key] = _service_integration(
                resolver, route_key, logical_id, targets[0], api
            )
            continue
        uri = integration.get("IntegrationUri")
        routes[route_key] = _integration_function(resolver, functions, uri, targets[0])
        if route_key == "$connect" and properties.get("AuthorizationType") == "CUSTOM":
            (chosen,) = [n for n in referenced_ids(properties.get("AuthorizerId"))]
            if chosen not in authorizers:
                raise TemplateError(f"{logical_id}: AuthorizerId names no authorizer of the API")
            authorizer_properties = _properties(resolver, chosen)
            if authorizer_properties.get("AuthorizerType") != "REQUEST":
                raise TemplateError(f"{chosen}: WebSocket authorizers are REQUEST authorizers")
            authorizer = Authorizer(
                _integration_function(
                    resolver, functions, authorizer_properties.get("AuthorizerUri"), chosen
                ),
                tuple(
                    str(s)
                    for s in resolver.resolve(authorizer_properties.get("IdentitySource", []))
                ),
            )
    stages = [s for s in _of_types(resolver, (STAGE_TYPE,)) if belongs(s)]
    stage_name = stage or (
        str(resolver.resolve(_properties(resolver, stages[0]).get("StageName")))
        if stages
        else "local"
    )
    return WebSocketApi(
        logical_id=api,
        api_id=str(resolver.ref(api)),
        stage=stage_name,
        route_selection_expression=str(
            api_properties.get("RouteSelectionExpression", DEFAULT_ROUTE_SELECTION)
        ),
        routes=routes,
        authorizer=authorizer,
        services=services,
        two_way=frozenset(two_way),
    )


def _service_integration(
    resolver: Resolver, route_key: str, route: str, integration: str, api: str
) -> ServiceIntegration:
    """A route's AWS service integration: its templates, responses and role."""
    properties = resolver.resolve(_properties(resolver, integration))
    service, action = parse_uri(str(properties.get("IntegrationUri", "")))

    def of(kind: str, field_name: str, owner: str) -> list[dict[str, Any]]:
        return [
            resolver.resolve(_properties(resolver, logical_id))
            for logical_id in _of_types(resolver, (kind,))
            if owner in referenced_ids(_properties(resolver, logical_id).get(field_name))
            and api in referenced_ids(_properties(resolver, logical_id).get("ApiId"))
        ]

    responses = tuple(
        IntegrationResponse(
            key=str(found["IntegrationResponseKey"]),
            templates={str(k): str(v) for k, v in (found.get("ResponseTemplates") or {}).items()},
            template_selection_expression=str(found.get("TemplateSelectionExpression", "")),
        )
        for found in of(INTEGRATION_RESPONSE_TYPE, "IntegrationId", integration)
    )
    route_properties = _properties(resolver, route)
    two_way = bool(route_properties.get("RouteResponseSelectionExpression")) and bool(
        of(ROUTE_RESPONSE_TYPE, "RouteId", route)
    )
    roles = referenced_ids(_properties(resolver, integration).get("CredentialsArn"))
    if len(roles) != 1 or resolver.type_of(roles[0]) != "AWS::IAM::Role":
        raise TemplateError(f"{integration}: CredentialsArn must name one role of the template")
    statements: list[dict[str, Any]] = []
    for policy in _properties(resolver, roles[0]).get("Policies") or []:
        document = resolver.resolve((policy or {}).get("PolicyDocument") or {})
        statements.extend(document.get("Statement") or [])
    return ServiceIntegration(
        route_key=route_key,
        service=service,
        action=action,
        request_templates={
            str(k): str(v) for k, v in (properties.get("RequestTemplates") or {}).items()
        },
        template_selection_expression=str(properties.get("TemplateSelectionExpression", "")),
        responses=responses,
        two_way=two_way,
        statements=tuple(statements),
    )
