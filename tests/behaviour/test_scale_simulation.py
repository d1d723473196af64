"""The scale simulator at 10,000 agents (docs/SCALE.md; `make simulate` runs
100,000 and 1,000,000): the real presence rules over the metered in-memory store,
with churn, crashes and a reconnect storm."""

from __future__ import annotations

import dataclasses
from functools import cache

import pytest

from agent_channel.presence import sweep_plan
from agent_channel.storage import schema
from agent_channel_dev.scale import aws
from agent_channel_dev.scale.cost import session_month
from agent_channel_dev.scale.report import per_minute_table
from agent_channel_dev.scale.simulation import Outcome, Scenario, Simulation

SCENARIO = Scenario(agents=10_000, minutes=9, storm_at_minute=5, sweep_workers=16)


@cache
def outcome() -> Outcome:
    return Simulation(SCENARIO).run()


def test_every_crashed_agent_is_unrouted_within_stale_after_plus_two_minutes() -> None:
    unrouted = outcome().unroute_seconds
    assert len(unrouted) > 10, "the scenario crashes agents"
    assert max(unrouted) <= SCENARIO.stale_after_seconds + 120


def test_no_sweeper_invocation_comes_near_its_timeout() -> None:
    assert outcome().sweep_longest_ms / 1000 < aws.SWEEPER_TIMEOUT_SECONDS / 3
    assert outcome().sweep_longest_ms / 1000 <= SCENARIO.sweep_budget_seconds
    assert SCENARIO.sweep_budget_seconds == (
        aws.SWEEPER_TIMEOUT_SECONDS - sweep_plan.SWEEP_MARGIN_SECONDS
    ), "the deployed function's budget"


ONE_SETTLE_SECONDS = 0.1
"""More than a sweep's longest settle (a partition Query, the clear transaction and
a CreateSchedule, about 50 ms) plus the continuation's Invoke."""


def test_a_sweep_short_of_time_hands_on_and_no_invocation_outlasts_its_budget() -> None:
    # A budget of a second and a half: each worker's share (about 625 agents, 4 s
    # of settles) takes a chain of continuations every minute.
    short = dataclasses.replace(SCENARIO, minutes=5, storm_at_minute=None, sweep_budget_seconds=1.5)
    result = Simulation(short).run()
    assert result.sweep_continuations >= 2 * short.sweep_workers * (short.minutes - 1)
    assert result.sweep_chains_cut == 0
    assert result.sweep_longest_chain >= 2, "a continuation that runs short hands on again"
    assert result.sweep_longest_ms / 1000 <= short.sweep_budget_seconds + ONE_SETTLE_SECONDS
    assert result.continuation_longest_ms / 1000 <= short.sweep_budget_seconds + ONE_SETTLE_SECONDS
    # Every routed agent still read once a minute: one partition per agent, plus
    # an index page per shard and one more per continuation's resumed shard.
    minute = result.meter.minute(2)
    queries = minute["sweeper:Query"]
    continued = minute["sweep_continuations"]
    assert 0.9 * short.agents < queries <= short.agents + schema.ROUTED_SHARDS + 1 + continued
    unrouted = result.unroute_seconds
    assert unrouted and max(unrouted) <= short.stale_after_seconds + 120
    table = per_minute_table(result)
    assert "longest sweeper invocation (s)" in table and "sweep continuations" in table


def test_the_sweep_reads_one_partition_per_routed_agent_and_one_page_per_shard() -> None:
    queries = outcome().meter.minute(2)["sweeper:Query"]
    # One index page per shard, the owed graces' partition, one partition per agent.
    assert 0.9 * SCENARIO.agents < queries <= SCENARIO.agents + schema.ROUTED_SHARDS + 1


def test_the_storm_settles_within_the_admission_rate_and_scheduler_quotas() -> None:
    result = outcome()
    assert result.storm_sessions > 9_000
    assert result.storm_settle_seconds is not None
    floor = result.storm_sessions / SCENARIO.new_connections_per_second
    assert floor <= result.storm_settle_seconds <= 3 * floor + 60
    meter = result.meter
    assert (
        meter.peak_per_second("new_connections") <= aws.QUOTAS["new_connections_per_second"].value
    )
    create = aws.QUOTAS["scheduler_create_per_second"].value
    assert meter.peak_per_second("scheduler:CreateSchedule") <= create
    assert result.connected_at_end > 0.95 * result.storm_sessions


def test_the_clients_backoff_thins_refused_upgrades_after_the_first_wave() -> None:
    meter = outcome().meter
    storm = SCENARIO.storm_at_minute * 60 + 30
    first_wave = meter.peak_per_second("connect_attempts", storm, storm + 2)
    later = meter.peak_per_second("connect_attempts", storm + 30, storm + 600)
    assert later < first_wave / 5, (first_wave, later)
    assert later <= aws.QUOTAS["apigw_requests_per_second"].value / 4


@pytest.mark.parametrize("heartbeat", [15, 30])
def test_cost_follows_the_heartbeat(heartbeat: int) -> None:
    quiet = dataclasses.replace(
        SCENARIO, agents=2_000, minutes=4, storm_at_minute=None, heartbeat_seconds=heartbeat
    )
    month = session_month(Simulation(quiet).run())
    messages = month.quantities["API Gateway messages"]
    assert messages == pytest.approx(730 * 3600 / heartbeat, rel=0.03)
    writes = month.quantities["DynamoDB writes (WRU)"]
    assert messages < writes < 1.15 * messages, "one write per heartbeat, plus churn"
    # Heartbeats run no Lambda: what is left is the client's restore every tenth
    # beat, plus connects, departures and sweeps.
    invocations = month.quantities["Lambda requests"]
    restores = messages / quiet.restore_every
    assert restores < invocations < restores + 0.1 * messages


def test_lambda_heartbeats_cost_an_invocation_each() -> None:
    before = dataclasses.replace(
        SCENARIO, agents=2_000, minutes=4, storm_at_minute=None, lambda_heartbeats=True
    )
    month = session_month(Simulation(before).run())
    messages = month.quantities["API Gateway messages"]
    assert month.quantities["Lambda requests"] > messages


def test_a_storm_run_ends_with_the_minute_the_storm_settles_in() -> None:
    # `make simulate` runs 100,000 and 1,000,000 agents so, with room to spare in
    # `minutes`: the settle time is then measured, never projected.
    scenario = dataclasses.replace(
        SCENARIO, agents=2_000, minutes=60, storm_at_minute=2, until_settled=True
    )
    result = Simulation(scenario).run()
    assert result.storm_settle_seconds is not None
    settled_at = scenario.storm_at_minute * 60 + 30 + result.storm_settle_seconds
    assert result.minutes_simulated == int(settled_at) // 60 + 1
    assert result.meter.minutes() == result.minutes_simulated
    assert result.storm_waiting_at_end == 0


def test_a_run_is_the_same_from_one_run_to_the_next() -> None:
    # The client's backoff jitter is drawn from a seeded generator in the
    # simulation, so the figures after a storm are reproducible.
    scenario = dataclasses.replace(SCENARIO, agents=2_000, minutes=4, storm_at_minute=2)
    first, second = Simulation(scenario).run(), Simulation(scenario).run()
    assert first.meter.seconds == second.meter.seconds
    assert first.unroute_seconds == second.unroute_seconds
    assert first.storm_settle_seconds == second.storm_settle_seconds


def test_a_chain_at_its_hop_bound_leaves_the_rest_to_the_next_minute() -> None:
    # A share that needs more than 1 + MAX_SWEEP_HOPS budgets: each chain is cut,
    # and the agents past the cut wait for a later minute's sweep.
    tiny = dataclasses.replace(
        SCENARIO, agents=2_000, minutes=4, storm_at_minute=None, sweep_budget_seconds=0.1
    )
    result = Simulation(tiny).run()
    assert result.sweep_chains_cut > 0
    assert result.sweep_longest_chain == sweep_plan.MAX_SWEEP_HOPS
