"""The 410 rule under concurrency: posting never destroys state it cannot prove
dead. A post that answers 410 because the handshake of a brand-new connection is
still in progress must leave that connection, its membership and its lease
alone, in every interleaving of the post with the connect and its handshake."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent_channel.delivery import gone
from agent_channel.storage import schema
from tests.support.clock import FakeClock
from tests.support.delivery_world import DeliveryWorld, fresh_delivery_world
from tests.support.interleave import Chooser, InterleavingError, Run, explaining, explore, run_once


@pytest.fixture(autouse=True)
def one_sweep_shard(monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock) -> None:
    monkeypatch.setattr(schema, "ROUTED_SHARDS", 1)


Scenario = Callable[[DeliveryWorld], tuple[list, Callable[[DeliveryWorld, Run], None]]]


def post_races_a_new_session(world: DeliveryWorld) -> tuple[list, Callable]:
    """A sibling is live; a new session connects while a message goes to the stream."""
    world.open("a", session_id="s1")
    actors = [
        ("sub_b", world.subscribe_with_handshake("b", "s2")),
        ("post", world.broadcast({"type": "note", "n": 1})),
    ]

    def check(world: DeliveryWorld, run: Run) -> None:
        presence = world.presence()
        assert presence.routing_on, f"routing lost: {run.trace}"
        leases = {lease.connection_id for lease in presence.leases}
        assert leases == {"a=", "b="}, f"the new session's lease was removed: {run.trace}"
        assert world.is_member("b="), f"the new session's membership was removed: {run.trace}"
        assert "b=" in world.live_connection_ids(), run.trace

    return actors, check


def post_races_the_only_session(world: DeliveryWorld) -> tuple[list, Callable]:
    """No sibling: a 410 torn down here would also switch routing off and schedule
    the agent-wide grace for work the new session holds."""
    actors = [
        ("sub_b", world.subscribe_with_handshake("b", "s2")),
        ("post", world.broadcast({"type": "note", "n": 1})),
    ]

    def check(world: DeliveryWorld, run: Run) -> None:
        presence = world.presence()
        assert presence.routing_on, f"routing lost: {run.trace}"
        leases = [lease.connection_id for lease in presence.leases]
        assert leases == ["b="], f"the new session's lease was removed: {run.trace}"
        assert world.is_member("b="), f"the new session's membership was removed: {run.trace}"
        assert not run.calls("scheduler", ("CreateSchedule",)), "no grace for a live session"

    return actors, check


def run_scenario(scenario: Scenario, clock: FakeClock, choose: Chooser) -> Run:
    with fresh_delivery_world(clock) as world:
        actors, check = scenario(world)
        run = run_once(actors, choose)
        with explaining(run):
            world.check_invariants()
            check(world, run)
        return run


SCENARIOS = [post_races_a_new_session, post_races_the_only_session]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_a_410_during_the_handshake_tears_nothing_down(
    scenario: Scenario, fake_clock: FakeClock
) -> None:
    answers: list[str] = []

    def one(choose: Chooser) -> None:
        run = run_scenario(scenario, fake_clock, choose)
        answers.append("gone" if run.results["post"].gone else "ok")

    runs = explore(one)
    # The 410 is really among the interleavings explored (the post before the
    # handshake), and so is the post after it.
    assert "gone" in answers and "ok" in answers, answers
    print(f"{scenario.__name__}: {runs} interleavings")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_the_harness_catches_a_410_that_tears_down_a_new_session(
    scenario: Scenario, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rule removed: every 410 is taken as proof the socket is dead.
    monkeypatch.setattr(gone, "may_be_in_handshake", lambda record, settings: False)
    with pytest.raises(InterleavingError, match=r"routing lost|was removed"):
        explore(lambda choose: run_scenario(scenario, fake_clock, choose))
