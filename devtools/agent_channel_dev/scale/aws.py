"""What the model knows about AWS: prices, quotas, latencies and CPU.

Prices and quotas are published figures, each with its source. Latencies and CPU
per request are assumptions of the model (stated in docs/SCALE.md), not quotas.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

REGION = "us-east-1"
PRICE_LIST_DATE = "2024-11-01"
"""Effective date of the newest price used (DynamoDB on-demand, halved that day);
the other prices below were unchanged at that date."""


@dataclass(frozen=True)
class Price:
    usd: float
    per: str
    source: str


PRICES = {
    "apigw_message": Price(
        1.00 / 1e6,
        "WebSocket message (32 KB units), first billion a month",
        "https://aws.amazon.com/api-gateway/pricing/",
    ),
    "apigw_connection_minute": Price(
        0.25 / 1e6, "WebSocket connection minute", "https://aws.amazon.com/api-gateway/pricing/"
    ),
    "lambda_request": Price(0.20 / 1e6, "Lambda request", "https://aws.amazon.com/lambda/pricing/"),
    "lambda_gb_second": Price(
        0.0000133334, "Lambda GB-second, arm64", "https://aws.amazon.com/lambda/pricing/"
    ),
    "dynamodb_wru": Price(
        0.625 / 1e6,
        "DynamoDB on-demand write request unit",
        "https://aws.amazon.com/dynamodb/pricing/on-demand/",
    ),
    "dynamodb_rru": Price(
        0.125 / 1e6,
        "DynamoDB on-demand read request unit",
        "https://aws.amazon.com/dynamodb/pricing/on-demand/",
    ),
    "scheduler_invocation": Price(
        1.00 / 1e6,
        "EventBridge Scheduler invocation (after 14 million free a month)",
        "https://aws.amazon.com/eventbridge/pricing/",
    ),
    "eventbridge_event": Price(
        1.00 / 1e6, "EventBridge custom event", "https://aws.amazon.com/eventbridge/pricing/"
    ),
    "ec2_t4g_small_hour": Price(
        0.0168, "EC2 t4g.small on-demand hour", "https://aws.amazon.com/ec2/pricing/on-demand/"
    ),
    "alb_hour": Price(
        0.0225,
        "Application Load Balancer hour",
        "https://aws.amazon.com/elasticloadbalancing/pricing/",
    ),
    "alb_lcu_hour": Price(
        0.008,
        "Application Load Balancer LCU hour",
        "https://aws.amazon.com/elasticloadbalancing/pricing/",
    ),
}


@dataclass(frozen=True)
class Quota:
    value: float
    unit: str
    source: str


APIGW_WEBSOCKET = (
    "https://docs.aws.amazon.com/apigateway/latest/developerguide/"
    "apigateway-execution-service-websocket-limits-table.html"
)
QUOTAS = {
    "new_connections_per_second": Quota(
        500, "new WebSocket connections per second, per account and Region", APIGW_WEBSOCKET
    ),
    "connection_duration_seconds": Quota(
        7200, "seconds a WebSocket connection may last", APIGW_WEBSOCKET
    ),
    "idle_timeout_seconds": Quota(
        600, "seconds of silence before API Gateway closes", APIGW_WEBSOCKET
    ),
    "apigw_requests_per_second": Quota(
        10_000,
        "requests per second per account and Region across REST, HTTP, WebSocket and "
        "@connections (steady rate; burst 5,000)",
        "https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html",
    ),
    "lambda_concurrency": Quota(
        1_000,
        "concurrent executions per account and Region",
        "https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html",
    ),
    "lambda_scaling_per_10s": Quota(
        1_000,
        "new execution environments per function every 10 seconds",
        "https://docs.aws.amazon.com/lambda/latest/dg/scaling-behavior.html",
    ),
    "scheduler_create_per_second": Quota(
        1_000,
        "CreateSchedule requests per second (the current page lists 5,000 in us-east-1; "
        "the model keeps the lower figure other pages of the same guide still give)",
        "https://docs.aws.amazon.com/scheduler/latest/UserGuide/scheduler-quotas.html",
    ),
    "scheduler_delete_per_second": Quota(
        1_000,
        "DeleteSchedule requests per second",
        "https://docs.aws.amazon.com/scheduler/latest/UserGuide/scheduler-quotas.html",
    ),
    "dynamodb_table_wru_per_second": Quota(
        40_000,
        "write request units per second per on-demand table (default table-level maximum)",
        "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html",
    ),
    "dynamodb_table_rru_per_second": Quota(
        40_000,
        "read request units per second per on-demand table (default table-level maximum)",
        "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html",
    ),
}

# ---------------------------------------------------------------- model assumptions

LATENCY_MS = {
    # In-Region round trips as the model takes them (DynamoDB advertises single-digit
    # milliseconds; transactions coordinate several items).
    "GetItem": 4.0,
    "BatchGetItem": 5.0,
    "Query": 5.0,
    "PutItem": 6.0,
    "UpdateItem": 6.0,
    "DeleteItem": 6.0,
    "TransactWriteItems": 14.0,
    "CreateSchedule": 25.0,
    "DeleteSchedule": 20.0,
    "Invoke": 15.0,
}
CPU_MS_PER_REQUEST = 1.0
"""Client CPU per AWS request at one full vCPU (build, sign, send, parse): the
order issue 16 measured for boto3."""
CPU_MS_PER_INVOCATION = 1.0
"""Handler CPU outside requests (event parsing, logging), at one full vCPU."""
FULL_VCPU_MB = 1769
"""Lambda allocates CPU in proportion to memory; one full vCPU at 1,769 MB."""

MEMORY_MB = {
    "authorize": 256,
    "connect": 256,
    "heartbeat": 256,
    "restore": 256,
    "disconnect": 256,
    "sweeper": 1024,
    "cancel_offline": 256,
}
SWEEPER_TIMEOUT_SECONDS = 60.0
ASYNC_INVOKE_START_MS = 1000.0
"""From an asynchronous Invoke's answer to the invocation it queued starting
(Lambda's internal event queue comes first): not documented, usually well under
a second; the model takes a second."""

ITEM_BYTES = {"user": 420, "lease": 260}
"""Sizes of the presence items as the store writes them (keys, attributes, names)."""


# Cached: the meter asks for every request of a run, millions at a million agents.
@cache
def cpu_share(memory_mb: int) -> float:
    return min(1.0, memory_mb / FULL_VCPU_MB)


@cache
def request_ms(operation: str, memory_mb: int) -> float:
    """Wall time of one request inside a function of this memory size."""
    return LATENCY_MS.get(operation, 6.0) + CPU_MS_PER_REQUEST / cpu_share(memory_mb)
