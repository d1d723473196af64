"""The stepped presence load benchmark (bench/presence_steps.py), tiny: one short
step of a few agents and a busy agent of four sessions, with short timings, so
that the report's shape, the server-side accounting and the invariant checks are
exercised in seconds. The full run is ``make bench-load``."""

from __future__ import annotations

import pytest
from bench import presence_steps

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY = presence_steps.Plan(
    rates=(2.0,),
    step_seconds=4.0,
    lifetime=(2.0, 4.0),
    heartbeat_seconds=1,
    stale_after_seconds=10,
    grace_seconds=3,
    busy_sessions=4,
    probe_seconds=0.3,
)


def test_a_tiny_step_reports_every_figure_and_keeps_the_invariants() -> None:
    result = presence_steps.run(TINY)

    assert not result.held_violations, result.held_violations
    assert not result.closed_violations, result.closed_violations
    [step] = result.steps
    assert result.busy is not None
    for measured in (step, result.busy):
        record = measured.record
        assert record.connected > 0 and record.connect
        assert record.heartbeats_sent > 0
        # Counted server-side, where moto serves the workers' requests: each route
        # is seen with its own requests (none of them is visible to this process).
        assert measured.ok(presence_steps.HEARTBEAT_FUNCTION) > 0
        assert measured.per_operation(
            presence_steps.CONNECT_FUNCTIONS, measured.ok("ConnectFunction")
        ) == pytest.approx(2.0, abs=0.5)
        assert measured.per_operation(
            (presence_steps.HEARTBEAT_FUNCTION,), measured.calls("HeartbeatFunction")
        ) == pytest.approx(1.0, abs=0.5)
        assert measured.mix.get("TransactWriteItems", 0) > 0
        assert measured.moto_busy > 0
    assert {c.kind for c in result.probes[0]} >= {"UpdateItem", "TransactWriteItems", "Query"}
    low, high = result.capacity_range(step)
    assert 0 < low <= high

    report = presence_steps.markdown(result)
    assert report.startswith(presence_steps.HEADER)
    assert report.count("\n| 2/s |") == 1 and "| busy agent" in report
    assert "Invariants while held: held. After every socket closed: held." in report
    assert "Client timeouts below the knee" in presence_steps.goals(result)
