"""The environment the stack's functions run with on the local stack.

Set before any module that reads settings is imported: ``config.settings()`` is
read once per process and the functions build their AWS clients at import, as
they do in Lambda.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

REGION = "us-east-1"
ACCOUNT = "000000000000"
CANCEL_OFFLINE_FUNCTION = "cancel_offline"


@dataclass(frozen=True)
class LocalEndpoints:
    moto_url: str
    """Every AWS service the functions call (DynamoDB, Scheduler, EventBridge)."""
    callback_url: str
    """The local @connections API, as API Gateway's ``https://.../{stage}``."""


@dataclass(frozen=True)
class Constants:
    heartbeat_seconds: int
    stale_after_seconds: int
    grace_seconds: int


def local_environment(
    endpoints: LocalEndpoints,
    constants: Constants,
    *,
    table_name: str,
    idempotency_table: str,
    schedule_group: str,
    event_bus: str,
    log_level: str,
) -> dict[str, str]:
    return {
        # botocore (and so PynamoDB) sends every service here; the @connections
        # client passes an explicit endpoint_url, which takes precedence.
        "AWS_ENDPOINT_URL": endpoints.moto_url,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "TABLE_NAME": table_name,
        "IDEMPOTENCY_TABLE_NAME": idempotency_table,
        "SCHEDULE_GROUP_NAME": schedule_group,
        "SCHEDULER_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/agent-channel-scheduler",
        # The scheduler loop maps this ARN's function name back to its folder.
        "CANCEL_OFFLINE_FUNCTION_ARN": (
            f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{CANCEL_OFFLINE_FUNCTION}"
        ),
        "EVENT_BUS_NAME": event_bus,
        "CALLBACK_URL": endpoints.callback_url,
        "HEARTBEAT_SECONDS": str(constants.heartbeat_seconds),
        "STALE_AFTER": str(constants.stale_after_seconds),
        "GRACE_SECONDS": str(constants.grace_seconds),
        "POWERTOOLS_SERVICE_NAME": "agent-channel",
        "POWERTOOLS_METRICS_NAMESPACE": "AgentChannelLocal",
        # EMF lines on stdout would bury the banner; there is no CloudWatch here.
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": log_level,
    }


def apply(environment: dict[str, str]) -> None:
    # A developer's AWS profile or session must never leak into the local stack.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "GRACE_DLQ_ARN"):
        os.environ.pop(name, None)
    os.environ.update(environment)
