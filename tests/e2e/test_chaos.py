"""At-least-once delivery under chaos (small version; ``make chaos`` runs 500):
the local gateway drops posts after answering 200, crashes and closes sessions at
random and holds handshakes open, and still every dispatch reaches the reference
client's handler exactly once after de-duplication, and none is left delegated
unseen."""

from __future__ import annotations

import os

import pytest

from tests.e2e.chaos import chaos_server, run_chaos

pytestmark = pytest.mark.e2e

DISPATCHES = int(os.environ.get("CHAOS_DISPATCHES", "40"))


def test_every_dispatch_is_handled_exactly_once_under_chaos() -> None:
    dev = chaos_server()
    try:
        report = run_chaos(dev, DISPATCHES)
    finally:
        assert dev.stop() == 0, dev.output.lines[-30:]
    print(f"\nCHAOS {report.summary()}")
    assert sorted(report.handled) == sorted(report.dispatched_at), "a dispatch was never handled"
    assert set(report.handled.values()) == {1}, "a dispatch reached the handler twice"
    assert report.final_status == {"done": DISPATCHES}, report.final_status
    assert report.connections > 1, "the chaos should have cut some sessions"
