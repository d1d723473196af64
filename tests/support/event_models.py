"""The reference the gateway's events are checked against: Powertools' parser
models of API Gateway WebSocket events (a model the project did not write).

Powertools has no model of the WebSocket REQUEST authorizer's event; the one
here is its documented shape, with Powertools' own ``$connect`` request context.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayWebSocketConnectEventModel,
    APIGatewayWebSocketConnectEventRequestContext,
    APIGatewayWebSocketDisconnectEventModel,
    APIGatewayWebSocketMessageEventModel,
)
from pydantic import BaseModel, Field


class WebSocketAuthorizerEvent(BaseModel):
    type: str = Field(pattern="^REQUEST$")
    method_arn: str = Field(alias="methodArn", pattern=r"^arn:aws:execute-api:.+/\$connect$")
    headers: dict[str, str]
    multi_value_headers: dict[str, list[str]] = Field(alias="multiValueHeaders")
    query: dict[str, str] = Field(alias="queryStringParameters")
    multi_value_query: dict[str, list[str]] = Field(alias="multiValueQueryStringParameters")
    stage_variables: dict[str, str] = Field(alias="stageVariables")
    request_context: APIGatewayWebSocketConnectEventRequestContext = Field(alias="requestContext")


MODELS: dict[str, type[BaseModel]] = {
    "AUTHORIZER": WebSocketAuthorizerEvent,
    "CONNECT": APIGatewayWebSocketConnectEventModel,
    "MESSAGE": APIGatewayWebSocketMessageEventModel,
    "DISCONNECT": APIGatewayWebSocketDisconnectEventModel,
}


def kind(event: dict[str, Any]) -> str:
    if event.get("type") == "REQUEST":
        return "AUTHORIZER"
    return str(event["requestContext"]["eventType"])


def conforms(event: dict[str, Any]) -> None:
    """Raise pydantic's ValidationError unless ``event`` fits its model."""
    MODELS[kind(event)].model_validate(event)
