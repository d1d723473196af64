"""The simulator's findings as markdown (the figures quoted in docs/SCALE.md)."""

from __future__ import annotations

from agent_channel_dev.scale import aws
from agent_channel_dev.scale.cost import server_per_session_month, session_month
from agent_channel_dev.scale.meter import LONGEST
from agent_channel_dev.scale.simulation import Outcome, median, percentile

COLUMNS = [
    ("DynamoDB requests", "dynamodb_requests"),
    ("RRU", "rru"),
    ("WRU", "wru"),
    ("Lambda invocations", "lambda_invocations"),
    ("GB-s", "lambda_gb_seconds"),
    ("Scheduler calls", "scheduler_calls"),
    ("@connections posts", "posts"),
    ("new connections", "new_connections"),
    ("upgrade attempts", "connect_attempts"),
    ("longest sweeper invocation (s)", "sweeper_longest_s"),
    ("sweep continuations", "sweep_continuations"),
]


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:,.1f}"


def per_minute_table(outcome: Outcome) -> str:
    meter = outcome.meter
    lines = [
        "| minute | " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|---:|" + "---:|" * len(COLUMNS),
    ]
    for minute in range(meter.minutes()):
        counts = meter.minute(minute)
        counts["scheduler_calls"] = sum(v for k, v in counts.items() if k.startswith("scheduler:"))
        counts["sweeper_longest_s"] = counts[LONGEST + "sweeper"] / 1000
        mark = " (storm)" if minute == outcome.scenario.storm_at_minute else ""
        cells = " | ".join(_fmt(counts[key]) for _, key in COLUMNS)
        lines.append(f"| {minute}{mark} | {cells} |")
    return "\n".join(lines)


def peaks_table(outcome: Outcome) -> str:
    meter = outcome.meter
    rows = [
        (
            "new connections / s",
            meter.peak_per_second("new_connections"),
            "new_connections_per_second",
        ),
        (
            "API Gateway requests / s (messages + upgrades)",
            max(
                counts["messages"] + counts["connect_attempts"] + counts["posts"]
                for counts in meter.seconds.values()
            ),
            "apigw_requests_per_second",
        ),
        (
            "Lambda concurrency (busy ms / 1000)",
            meter.peak_per_second("lambda_busy_ms") / 1000,
            "lambda_concurrency",
        ),
        (
            "Scheduler CreateSchedule / s",
            meter.peak_per_second("scheduler:CreateSchedule"),
            "scheduler_create_per_second",
        ),
        (
            "Scheduler DeleteSchedule / s",
            meter.peak_per_second("scheduler:DeleteSchedule"),
            "scheduler_delete_per_second",
        ),
        ("DynamoDB WRU / s", meter.peak_per_second("wru"), "dynamodb_table_wru_per_second"),
        ("DynamoDB RRU / s", meter.peak_per_second("rru"), "dynamodb_table_rru_per_second"),
    ]
    lines = ["| peak in any second | value | quota | within |", "|---|---:|---:|---|"]
    for name, value, quota in rows:
        limit = aws.QUOTAS[quota].value
        lines.append(
            f"| {name} | {_fmt(value)} | {_fmt(limit)} | {'yes' if value <= limit else '**no**'} |"
        )
    return "\n".join(lines)


def summary(outcome: Outcome) -> str:
    scenario = outcome.scenario
    unroute = outcome.unroute_seconds
    throttled = sum(
        counts["scheduler_throttled:CreateSchedule"] for counts in outcome.meter.seconds.values()
    )
    if not outcome.storm_sessions:
        settle = "none in this run"
    elif outcome.storm_settle_seconds is not None:
        settle = f"{outcome.storm_settle_seconds:.0f} s"
    else:
        left = outcome.storm_waiting_at_end
        rate = scenario.new_connections_per_second
        projected = outcome.storm_elapsed + left / rate
        settle = (
            f"not within the simulated window ({left:,} still away at its end; at "
            f"{rate} admissions a second, about {projected:,.0f} s in all)"
        )
    stopped = scenario.until_settled and outcome.minutes_simulated < scenario.minutes
    lines = [
        f"- agents {scenario.agents:,}, heartbeat {scenario.heartbeat_seconds} s, stale after "
        f"{scenario.stale_after_seconds} s, sweep workers {scenario.sweep_workers}, "
        f"{outcome.minutes_simulated} simulated minutes"
        + (" (the run ends with the minute the storm settled in)" if stopped else ""),
        f"- crashed agents unrouted: {len(unroute)}; time from crash to unrouted: median "
        f"{median(unroute):.0f} s, p99 {percentile(unroute, 0.99):.0f} s, max "
        f"{max(unroute, default=0):.0f} s (goal: at most {scenario.stale_after_seconds + 120} s)",
        f"- longest sweeper invocation: {outcome.sweep_longest_ms / 1000:.1f} s of "
        f"{aws.SWEEPER_TIMEOUT_SECONDS:.0f} s (no settle starts past "
        f"{scenario.sweep_budget_seconds:g} s: the rest goes to a continuation)",
        f"- sweep continuations: {outcome.sweep_continuations:,} in all, at most "
        f"{_most_continuations(outcome):,} in a minute; the longest "
        f"{outcome.continuation_longest_ms / 1000:.1f} s; continuations in the longest "
        f"chain: {outcome.sweep_longest_chain}; chains cut at the hop bound (left to "
        f"the next minute's sweep): {outcome.sweep_chains_cut:,}",
        f"- storm: {outcome.storm_sessions:,} sockets dropped; all back: {settle}; "
        f"grace schedules refused by Scheduler's rate and owed instead: {throttled:,.0f}",
        f"- errors the rules logged (throttled grace schedules included): {len(outcome.errors):,}",
    ]
    return "\n".join(lines)


def _most_continuations(outcome: Outcome) -> int:
    meter = outcome.meter
    return int(
        max((meter.minute(m)["sweep_continuations"] for m in range(meter.minutes())), default=0)
    )


def cost_table(outcomes: dict[str, Outcome]) -> str:
    months = {name: session_month(outcome) for name, outcome in outcomes.items()}
    names = list(months)
    lines = [
        "| item | " + " | ".join(f"{n}: units | {n}: USD" for n in names) + " |",
        "|---|" + "---:|---:|" * len(names),
    ]
    for label in next(iter(months.values())).dollars:
        cells = " | ".join(
            f"{months[n].quantities[label]:,.0f} | {months[n].dollars[label]:.4f}" for n in names
        )
        lines.append(f"| {label} | {cells} |")
    totals = " | ".join(f" | **{months[n].total:.4f}**" for n in names)
    lines.append(f"| **total per session-month** |{totals} |")
    server = server_per_session_month()
    lines.append("")
    lines.append("| always-on server, per session-month (1,000 sessions a server) | USD |")
    lines.append("|---|---:|")
    for label, usd in server.items():
        lines.append(f"| {label} | {usd:.4f} |")
    lines.append(f"| **total** | **{sum(server.values()):.4f}** |")
    return "\n".join(lines)
