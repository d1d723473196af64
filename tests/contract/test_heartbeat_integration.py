"""template.yaml's heartbeat integration renews a lease exactly as the Lambda
``touch`` did (presence/dynamodb.py): the same item, the same attributes and
values, the same condition. The condition is what keeps a heartbeat from
recreating a lease that a reap or a $disconnect deleted (the race restore exists
for); if either side changes, this fails."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import botocore.client
import pytest

from agent_channel.presence.dynamodb import DynamoPresenceStore
from agent_channel.storage.records import Record
from agent_channel_dev.local import service_integration
from agent_channel_dev.local.service_integration import ServiceIntegration
from tests.support.gateway import APP, APP_TABLE, SERVICE_ROUTES, table_arn

AGENT_ID = 42
CONNECTION_ID = "L0SM9cOFvHcCIhw="
NOW_MS = 1_800_000_123_456
CHANNEL_AGENT = {"user_id": "7", "target": "channel_agent", "agent_id": str(AGENT_ID)}


def integration() -> ServiceIntegration:
    return SERVICE_ROUTES["heartbeat"]


def context(authorizer: dict[str, Any], connection_id: str = CONNECTION_ID) -> dict[str, Any]:
    return service_integration.context_variables(
        route_key="heartbeat",
        connection_id=connection_id,
        connected_at_ms=NOW_MS - 60_000,
        request_time_ms=NOW_MS,
        request_id="r",
        message_id="m",
        domain_name="d",
        stage="prod",
        api_id="a",
        source_ip="1.2.3.4",
        authorizer=authorizer,
    )


def rendered(authorizer: dict[str, Any] = CHANNEL_AGENT) -> dict[str, Any]:
    body = service_integration.request_body(
        integration(), context(authorizer), '{"action":"heartbeat"}'
    )
    request = json.loads(body)
    assert isinstance(request, dict)
    return request


@pytest.fixture
def touch_request(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The UpdateItem the Lambda touch sends, captured before it leaves botocore."""
    sent: dict[str, Any] = {}

    def capture(self: Any, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        assert operation == "UpdateItem"
        sent.update(params)
        return {"Attributes": {}}

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", capture)
    DynamoPresenceStore().touch(AGENT_ID, CONNECTION_ID, NOW_MS / 1000)
    return sent


def _named(expression: str, names: dict[str, str]) -> str:
    return re.sub(r"#[A-Za-z0-9_]+", lambda m: names.get(m.group(0), m.group(0)), expression)


def _assignments(request: dict[str, Any]) -> dict[str, Decimal]:
    """attribute -> value of a ``SET a = :v, b = :w`` update expression."""
    names = request.get("ExpressionAttributeNames") or {}
    values = request["ExpressionAttributeValues"]
    expression = _named(request["UpdateExpression"], names).strip()
    assert expression.upper().startswith("SET ")
    assigned: dict[str, Decimal] = {}
    for part in expression[4:].split(","):
        attribute, placeholder = (side.strip() for side in part.split("="))
        assigned[attribute] = Decimal(values[placeholder]["N"])
    return assigned


def _condition(request: dict[str, Any]) -> str:
    names = request.get("ExpressionAttributeNames") or {}
    return re.sub(r"\s+", "", _named(request["ConditionExpression"], names))


def test_it_renews_the_same_lease_item_as_the_lambda_touch(touch_request: dict[str, Any]) -> None:
    request = rendered()
    assert touch_request["TableName"] == Record.Meta.table_name
    assert request["TableName"] == APP_TABLE, "the template's own table"
    assert request["Key"] == touch_request["Key"]


def test_it_sets_the_same_attributes_to_the_same_values(touch_request: dict[str, Any]) -> None:
    mine, theirs = _assignments(rendered()), _assignments(touch_request)
    assert set(mine) == set(theirs) == {"last_seen_at", "expires_at"}
    # last_seen_at to the millisecond (the Lambda's clock had more digits; a
    # lease read as stale is then at most a millisecond early, never late).
    assert mine["last_seen_at"] == Decimal(NOW_MS) / 1000
    assert abs(theirs["last_seen_at"] - mine["last_seen_at"]) < Decimal("0.001")
    assert mine["expires_at"] == theirs["expires_at"]


def test_its_condition_is_the_lambda_touchs(touch_request: dict[str, Any]) -> None:
    assert _condition(rendered()) == _condition(touch_request) == "attribute_exists(pk)"
    # The only difference: PynamoDB's update always asks for the new item back; the
    # integration has no use for it (and its role may not read any).
    assert touch_request["ReturnValues"] == "ALL_NEW"
    assert rendered()["ReturnValues"] == "NONE"


def test_nothing_of_the_frame_reaches_the_request() -> None:
    template = integration().request_templates["$default"]
    assert "$input" not in template, "the key must come from what API Gateway vouches for"
    other = service_integration.request_body(
        integration(),
        context(CHANNEL_AGENT),
        json.dumps({"action": "heartbeat", "agent_id": 1, "connectionId": "x="}),
    )
    assert json.loads(other) == rendered()


def test_the_role_may_only_renew_lease_timestamps_in_agent_partitions() -> None:
    statements = integration().statements
    (statement,) = statements
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "dynamodb:UpdateItem"
    assert statement["Resource"] == APP.resolver.get_att("Table", "Arn")
    keys = service_integration.dynamodb_condition_keys
    allowed = service_integration.allowed
    arn = table_arn(APP_TABLE)
    assert allowed(statements, "dynamodb:UpdateItem", arn, keys(rendered()))
    assert not allowed(statements, "dynamodb:PutItem", arn, keys(rendered()))
    elsewhere = {**rendered(), "Key": {"pk": {"S": "TOKEN#x"}, "sk": {"S": "TOKEN"}}}
    assert not allowed(statements, "dynamodb:UpdateItem", arn, keys(elsewhere))
    routing = {**rendered(), "UpdateExpression": "SET routing_expression = :now"}
    assert not allowed(statements, "dynamodb:UpdateItem", arn, keys(routing))
    returning = {**rendered(), "ReturnValues": "ALL_OLD"}
    assert not allowed(statements, "dynamodb:UpdateItem", arn, keys(returning))


def test_the_route_is_one_way_so_nothing_is_billed_back() -> None:
    # A route response is a message sent, billed as the heartbeat itself is: an
    # acknowledgement would double what a session pays for messages.
    assert integration().two_way is False
    assert integration().responses == ()


def test_the_emulated_gateway_picks_integration_responses_as_api_gateway_does() -> None:
    """For two-way routes of any app: the status against each ``/regex/`` key,
    else ``$default``; the template renders over the service's answer."""
    responses = (
        service_integration.IntegrationResponse("/2\\d\\d/", {"$default": '{"ok":true}'}),
        service_integration.IntegrationResponse(
            "$default", {"$default": "#set($e = $input.path('$.__type'))[$e]"}
        ),
    )
    chosen = service_integration.select_response(responses, 200)
    assert chosen is responses[0]
    failed = service_integration.select_response(responses, 400)
    assert failed is responses[1]
    body = json.dumps({"__type": service_integration.DYNAMODB_ERROR_PREFIX + "X"})
    rendered_answer = service_integration.response_body(failed, context(CHANNEL_AGENT), body)
    assert rendered_answer == f"[{service_integration.DYNAMODB_ERROR_PREFIX}X]"
    assert service_integration.select_response(responses[:1], 500) is None
