"""API Gateway's AWS (non-proxy) integrations of a WebSocket route, as AWS runs them.

For a frame on such a route: the request template is chosen by the integration's
template selection expression and rendered (VTL, with ``$context``, ``$input`` and
``$util`` as API Gateway documents them for WebSocket APIs); the rendered body
goes to the service action the integration URI names, as the integration's
credentials role (held to that role's IAM statements, conditions included); the
integration response is chosen by matching the service's HTTP status against each
response key (``/regex/``, else ``$default``); its template is rendered over the
service's answer; on a two-way route that text goes to the socket (on a one-way
route nothing does, whatever the service answered). No matching response on a
two-way route is a configuration error, and the client is told ``Internal server
error``, as on AWS.

Only DynamoDB's JSON actions are served (what template.yaml uses); any other
service is refused when the template is read, not at the first frame.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Protocol

import airspeed
from airspeed import operators

DYNAMODB_ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"
"""How DynamoDB names an error in the ``__type`` of its JSON answer."""

SERVICES = ("dynamodb",)
_ACTION_URI = re.compile(r"^arn:aws[a-z-]*:apigateway:[a-z0-9-]+:([a-z0-9]+):action/([A-Za-z]+)$")


class IntegrationError(ValueError):
    """The integration cannot run as configured (API Gateway fails the same way)."""


@dataclass(frozen=True)
class IntegrationResponse:
    key: str
    """``$default`` or ``/regex/`` matched against the service's status code."""
    templates: dict[str, str]
    template_selection_expression: str = ""


@dataclass(frozen=True)
class ServiceIntegration:
    route_key: str
    service: str
    action: str
    request_templates: dict[str, str]
    template_selection_expression: str
    responses: tuple[IntegrationResponse, ...]
    two_way: bool
    """The route has a route response: the integration response reaches the client."""
    statements: tuple[dict[str, Any], ...]
    """The IAM statements of the integration's credentials role."""


def parse_uri(uri: str) -> tuple[str, str]:
    """(service, action) of ``arn:aws:apigateway:REGION:SERVICE:action/ACTION``."""
    found = _ACTION_URI.match(uri)
    if not found:
        raise IntegrationError(f"not an AWS service action URI: {uri!r}")
    service, action = found.group(1), found.group(2)
    if service not in SERVICES:
        raise IntegrationError(f"service {service!r} is not served locally")
    return service, action


# -- VTL ------------------------------------------------------------------------

# Velocity starts a directive only at a ``#`` followed by a letter, ``{``, ``#`` or
# ``*``; airspeed also swallowed a ``$`` after a lone ``#`` as text, so
# ``"USER#$context.authorizer.agent_id"`` (a key prefix, as DynamoDB templates
# write them) was never evaluated. Airspeed's own text pattern, with ``$`` left to
# the reference that follows.
operators.Text.PLAIN = re.compile(
    r"((?:[^\\\$#]+|\\[\$#])+|\$[^!\{a-z0-9_]|\$$|#$"
    r"|#[^\{\}a-zA-Z0-9#\*\$]+|\\.)(.*)$",
    re.S + re.I,
)


def _json_path(document: Any, path: str) -> Any:
    """The JSONPath subset mapping templates use: ``$``, ``$.a.b``, ``$['a']``, ``$.a[0]``."""
    if not path.startswith("$"):
        raise IntegrationError(f"a JSONPath starts with $: {path!r}")
    value = document
    for name, index in re.findall(r"\.([A-Za-z0-9_$-]+)|\[['\"]?([^'\"\]]+)['\"]?\]", path[1:]):
        part = name or index
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


class VtlInput:
    """``$input`` of a mapping template."""

    def __init__(self, body: str) -> None:
        self.body = body
        try:
            self._document: Any = json.loads(body) if body else None
        except ValueError:
            self._document = None

    def path(self, path: str) -> Any:
        found = _json_path(self._document, path)
        # API Gateway renders a missing value as an empty string.
        return "" if found is None else found

    def json(self, path: str) -> str:
        return json.dumps(_json_path(self._document, path))

    def params(self, name: str | None = None) -> Any:
        # WebSocket messages carry no header, path or query parameters.
        return {} if name is None else ""


class VtlUtil:
    """``$util`` of a mapping template."""

    @staticmethod
    def escapeJavaScript(text: Any) -> str:
        escaped = json.dumps(str(text), ensure_ascii=False)[1:-1]
        # API Gateway's escaping also turns ' into \' (documented).
        return escaped.replace("'", "\\'")

    @staticmethod
    def parseJson(text: str) -> Any:
        return json.loads(text)

    @staticmethod
    def urlEncode(text: str) -> str:
        return urllib.parse.quote_plus(str(text))

    @staticmethod
    def urlDecode(text: str) -> str:
        return urllib.parse.unquote_plus(str(text))

    @staticmethod
    def base64Encode(text: str) -> str:
        return base64.b64encode(str(text).encode()).decode()

    @staticmethod
    def base64Decode(text: str) -> str:
        return base64.b64decode(str(text)).decode()


def render(template: str, variables: dict[str, Any]) -> str:
    """Render a mapping template; a template that cannot be rendered is API
    Gateway's 500 (``IntegrationError``)."""
    try:
        return str(airspeed.Template(template).merge(variables))
    except airspeed.TemplateError as error:
        raise IntegrationError(f"mapping template failed: {error}") from error


def context_variables(
    *,
    route_key: str,
    connection_id: str,
    connected_at_ms: int,
    request_time_ms: int,
    request_id: str,
    message_id: str,
    domain_name: str,
    stage: str,
    api_id: str,
    source_ip: str,
    authorizer: dict[str, Any] | None,
) -> dict[str, Any]:
    """``$context`` of a WebSocket message, as API Gateway documents it."""
    return {
        "apiId": api_id,
        "authorizer": dict(authorizer or {}),
        "connectedAt": connected_at_ms,
        "connectionId": connection_id,
        "domainName": domain_name,
        "eventType": "MESSAGE",
        "extendedRequestId": request_id,
        "identity": {"sourceIp": source_ip},
        "messageDirection": "IN",
        "messageId": message_id,
        "requestId": request_id,
        "requestTimeEpoch": request_time_ms,
        "routeKey": route_key,
        "stage": stage,
    }


def _selected(templates: dict[str, str], expression: str, body: str) -> str | None:
    """The template a template selection expression picks (``\\$default`` here)."""
    key = expression.replace("\\$", "$") if expression else "$default"
    if key.startswith("${request.body.") or key.startswith("$request.body."):
        path = key.strip("${}").removeprefix("request.body.")
        value = _json_path(VtlInput(body)._document, "$." + path)
        key = str(value) if value is not None else "$default"
    return templates.get(key, templates.get("$default"))


def request_body(integration: ServiceIntegration, context: dict[str, Any], body: str) -> str:
    template = _selected(
        integration.request_templates, integration.template_selection_expression, body
    )
    if template is None:
        # PassthroughBehavior NEVER with no matching template: 415 on AWS.
        raise IntegrationError("no request template matches (Unsupported Media Type)")
    return render(template, {"context": context, "input": VtlInput(body), "util": VtlUtil()})


def select_response(
    responses: tuple[IntegrationResponse, ...], status: int
) -> IntegrationResponse | None:
    """The integration response whose ``/regex/`` key matches the status, else ``$default``."""
    for candidate in responses:
        key = candidate.key
        is_pattern = len(key) > 1 and key.startswith("/") and key.endswith("/")
        if is_pattern and re.fullmatch(key[1:-1], str(status)):
            return candidate
    return next((r for r in responses if r.key == "$default"), None)


def response_body(response: IntegrationResponse, context: dict[str, Any], service_body: str) -> str:
    template = _selected(response.templates, response.template_selection_expression, "")
    if template is None:
        return service_body  # no template: the service's answer passes through
    return render(
        template, {"context": context, "input": VtlInput(service_body), "util": VtlUtil()}
    )


# -- IAM ---------------------------------------------------------------------------


def _condition_holds(operator: str, wanted: dict[str, Any], keys: dict[str, list[str]]) -> bool:
    set_operator, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    if base not in ("StringEquals", "StringLike"):
        raise IntegrationError(f"IAM condition operator {operator!r} is not served locally")

    def matches(value: str, patterns: list[str]) -> bool:
        if base == "StringEquals":
            return value in patterns
        return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)

    for key, expected in wanted.items():
        patterns = [str(p) for p in (expected if isinstance(expected, list) else [expected])]
        values = keys.get(key)
        if values is None:
            if set_operator == "ForAllValues" or if_exists:
                continue  # ForAllValues over no values holds; IfExists skips a missing key
            return False
        if set_operator == "ForAnyValue":
            if not any(matches(v, patterns) for v in values):
                return False
        elif not all(matches(v, patterns) for v in values):
            return False
    return True


def allowed(
    statements: tuple[dict[str, Any], ...],
    action: str,
    resource: str,
    condition_keys: dict[str, list[str]],
) -> bool:
    """IAM's evaluation of identity statements: an explicit Deny wins, else an Allow
    whose action, resource and every condition match."""
    verdict = False
    for statement in statements:
        actions = statement.get("Action", [])
        resources = statement.get("Resource", [])
        actions = actions if isinstance(actions, list) else [actions]
        resources = resources if isinstance(resources, list) else [resources]
        if not any(fnmatch.fnmatchcase(action.lower(), str(a).lower()) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(resource, str(r)) for r in resources):
            continue
        conditions = statement.get("Condition") or {}
        if not all(
            _condition_holds(op, wanted, condition_keys) for op, wanted in conditions.items()
        ):
            continue
        if statement.get("Effect") == "Deny":
            return False
        verdict = verdict or statement.get("Effect") == "Allow"
    return verdict


_FUNCTIONS = {"attribute_exists", "attribute_not_exists", "attribute_type", "begins_with",
              "contains", "size", "if_not_exists", "list_append", "SET", "REMOVE", "ADD",
              "DELETE", "AND", "OR", "NOT", "BETWEEN", "IN"}  # fmt: skip


def dynamodb_condition_keys(request: dict[str, Any]) -> dict[str, list[str]]:
    """The DynamoDB IAM condition keys of an item request: ``dynamodb:LeadingKeys``
    (the partition key's value), ``dynamodb:Attributes`` (the key's attributes and
    every attribute the expressions name), ``dynamodb:ReturnValues``."""
    key = request.get("Key") or request.get("Item") or {}
    names = dict(request.get("ExpressionAttributeNames") or {})
    attributes = set(key)
    for field in ("UpdateExpression", "ConditionExpression", "ProjectionExpression"):
        text = re.sub(r":[A-Za-z0-9_]+", " ", str(request.get(field) or ""))
        for word in re.findall(r"#?[A-Za-z_][A-Za-z0-9_]*", text):
            if word.startswith("#"):
                attributes.add(str(names.get(word, word)))
            elif word not in _FUNCTIONS:
                attributes.add(word)
    keys: dict[str, list[str]] = {"dynamodb:Attributes": sorted(attributes)}
    leading = [next(iter(v.values())) for v in list(key.values())[:1] if isinstance(v, dict)]
    if leading:
        keys["dynamodb:LeadingKeys"] = [str(leading[0])]
    if "ReturnValues" in request:
        keys["dynamodb:ReturnValues"] = [str(request["ReturnValues"])]
    return keys


# -- the call ------------------------------------------------------------------------


class DynamoDbCaller(Protocol):
    def _make_api_call(self, operation_name: str, api_params: dict[str, Any]) -> Any: ...


def _error(code: str, message: str) -> str:
    return json.dumps({"__type": DYNAMODB_ERROR_PREFIX + code, "message": message})


def call_dynamodb(
    client: Any,
    integration: ServiceIntegration,
    rendered: str,
    table_arn_of: Any,
) -> tuple[int, str]:
    """Send a rendered request to DynamoDB as the credentials role: (status, body),
    with DynamoDB's own status and error shapes."""
    from botocore.exceptions import ClientError, ParamValidationError

    try:
        request = json.loads(rendered)
    except ValueError:
        return 400, _error("SerializationException", "the request body is not JSON")
    if not isinstance(request, dict):
        return 400, _error("SerializationException", "the request body is not a JSON object")
    resource = str(table_arn_of(str(request.get("TableName", ""))))
    action = f"dynamodb:{integration.action}"
    if not allowed(integration.statements, action, resource, dynamodb_condition_keys(request)):
        return 400, _error(
            "AccessDeniedException",
            f"the integration's role is not authorized to perform: {action} on resource: "
            f"{resource}",
        )
    try:
        answer = client._make_api_call(integration.action, request)
    except ParamValidationError as error:
        return 400, _error("ValidationException", str(error))
    except ClientError as error:
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400))
        details = error.response.get("Error", {})
        return status, _error(str(details.get("Code", "")), str(details.get("Message", "")))
    answer = {k: v for k, v in dict(answer).items() if k != "ResponseMetadata"}
    return 200, json.dumps(answer, default=str)


@dataclass(frozen=True)
class Outcome:
    status: int
    """The service's status code."""
    reply: str | None
    """What the client is sent (None on a one-way route)."""


def run(
    integration: ServiceIntegration,
    context: dict[str, Any],
    body: str,
    *,
    client: Any,
    table_arn_of: Any,
) -> Outcome:
    """One frame through the integration (blocking: call it off the event loop).
    Raises IntegrationError where API Gateway answers ``Internal server error``."""
    rendered = request_body(integration, context, body)
    status, answer = call_dynamodb(client, integration, rendered, table_arn_of)
    if not integration.two_way:
        # One-way: whatever the service answered, nothing reaches the client.
        return Outcome(status, None)
    response = select_response(integration.responses, status)
    if response is None:
        raise IntegrationError("no match for output mapping and no default output mapping")
    reply = response_body(response, context, answer) if integration.two_way else None
    return Outcome(status, reply)
