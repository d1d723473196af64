"""Dollars per connected session-month, from the simulated fleet's steady minutes,
itemized by what AWS bills; and the always-on server a user would pick instead."""

from __future__ import annotations

from dataclasses import dataclass

from agent_channel_dev.scale import aws
from agent_channel_dev.scale.meter import tally
from agent_channel_dev.scale.simulation import Outcome

MINUTES_PER_MONTH = 730 * 60
"""AWS prices a month as 730 hours."""

ITEMS = [
    ("API Gateway messages", "messages", "apigw_message"),
    ("API Gateway connection minutes", "connection_minutes", "apigw_connection_minute"),
    ("Lambda requests", "lambda_invocations", "lambda_request"),
    ("Lambda duration (GB-s)", "lambda_gb_seconds", "lambda_gb_second"),
    ("DynamoDB writes (WRU)", "wru", "dynamodb_wru"),
    ("DynamoDB reads (RRU)", "rru", "dynamodb_rru"),
    ("Scheduler invocations", "scheduler_invocations", "scheduler_invocation"),
    ("EventBridge events", "eventbridge_events", "eventbridge_event"),
]


@dataclass(frozen=True)
class SessionMonth:
    quantities: dict[str, float]
    """Billed units per connected session-month, by item."""
    dollars: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.dollars.values())


def steady_minutes(outcome: Outcome) -> list[int]:
    """Whole minutes before the storm (or all), the first one skipped."""
    last = outcome.meter.minutes()
    storm = outcome.scenario.storm_at_minute
    end = storm if storm is not None else last
    return list(range(1, max(2, end)))


def session_month(outcome: Outcome) -> SessionMonth:
    minutes = steady_minutes(outcome)
    total = tally()
    for minute in minutes:
        for key, value in outcome.meter.minute(minute).items():
            total[key] += value
    sessions_per_minute = total["connection_minutes"] / len(minutes)
    scale = MINUTES_PER_MONTH / len(minutes) / sessions_per_minute
    quantities = {label: total[key] * scale for label, key, _ in ITEMS}
    dollars = {label: quantities[label] * aws.PRICES[price].usd for label, _, price in ITEMS}
    return SessionMonth(quantities, dollars)


def server_per_session_month(sessions_per_server: int = 1000) -> dict[str, float]:
    """One small always-on WebSocket server per thousand sessions (t4g.small, 2 vCPU
    2 GiB), a pair of them for one failure, behind one Application Load Balancer
    (one LCU holds 3,000 active connections)."""
    hours = MINUTES_PER_MONTH / 60
    pair = 2 * aws.PRICES["ec2_t4g_small_hour"].usd * hours
    balancer = aws.PRICES["alb_hour"].usd * hours
    lcus = max(1.0, sessions_per_server / 3000) * aws.PRICES["alb_lcu_hour"].usd * hours
    per = sessions_per_server
    return {
        "two t4g.small instances": pair / per,
        "load balancer hours": balancer / per,
        "load balancer capacity units": lcus / per,
    }
