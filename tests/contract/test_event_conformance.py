"""Every event the local gateway builds, and every API Gateway event in events/
(what `sam local invoke -e` feeds the functions), validates against Powertools'
parser models: a reference this project did not write. The events the running
gateway actually sends are checked the same way end to end
(tests/e2e/test_gateway_conformance.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent_channel_dev.local import apigw_events
from tests.support.event_models import conforms, kind

EVENTS = Path(__file__).resolve().parents[2] / "events"
API_GATEWAY_SAMPLES = [
    "authorize.json",
    "connect.json",
    "heartbeat.json",
    "replay_permissions.json",
    "default.json",
    "disconnect.json",
    "ack.json",
    "resume.json",
    "resync.json",
]


@pytest.mark.parametrize("name", API_GATEWAY_SAMPLES)
def test_every_sample_event_conforms(name: str) -> None:
    conforms(json.loads((EVENTS / name).read_text(encoding="utf-8")))


def test_every_api_gateway_sample_is_checked() -> None:
    shaped = {
        path.name
        for path in EVENTS.glob("*.json")
        if "requestContext" in json.loads(path.read_text(encoding="utf-8"))
    }
    assert shaped == set(API_GATEWAY_SAMPLES)


def built() -> dict[str, dict[str, Any]]:
    upgrade = apigw_events.Upgrade.of(
        [("Authorization", "Bearer t"), ("Connection", "Upgrade"), ("Upgrade", "websocket")],
        [("agent_id", "42"), ("tag", "a"), ("tag", "b")],
        source_ip="203.0.113.7",
    )
    context = {"principalId": "7", "integrationLatency": 3, "user_id": "7"}
    return {
        "authorizer": apigw_events.authorizer_event("c1=", upgrade=upgrade),
        "connect": apigw_events.route_event("$connect", "c1=", authorizer=context, upgrade=upgrade),
        "message": apigw_events.route_event(
            "heartbeat", "c1=", authorizer=context, body='{"action":"heartbeat"}'
        ),
        "default": apigw_events.route_event("$default", "c1=", authorizer=context, body="x"),
        "disconnect": apigw_events.route_event(
            "$disconnect", "c1=", authorizer=context, status_code=1005, reason="r"
        ),
        "disconnect_without_authorizer": apigw_events.route_event("$disconnect", "c1="),
    }


@pytest.mark.parametrize("name", sorted(built()))
def test_every_built_event_conforms(name: str) -> None:
    conforms(built()[name])


def test_built_events_carry_what_api_gateway_puts_in_them() -> None:
    events = built()
    connect = events["connect"]
    assert not {"Connection", "Upgrade"} & set(connect["headers"])
    assert connect["multiValueQueryStringParameters"]["tag"] == ["a", "b"]
    assert connect["queryStringParameters"]["tag"] == "b"
    assert connect["headers"]["X-Forwarded-For"] == "203.0.113.7"
    assert events["authorizer"]["multiValueQueryStringParameters"]["tag"] == ["a", "b"]
    assert "messageId" in events["message"]["requestContext"]
    assert set(events["disconnect"]["multiValueHeaders"]) == set(events["disconnect"]["headers"])


def test_the_reference_catches_what_the_old_builder_got_wrong() -> None:
    # The check can fail: a $disconnect without multiValueHeaders (as the local
    # gateway used to send it) is refused by Powertools' model.
    event = built()["disconnect"]
    del event["multiValueHeaders"]
    assert kind(event) == "DISCONNECT"
    with pytest.raises(ValidationError):
        conforms(event)
