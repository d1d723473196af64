"""A sweep stops when its time budget runs out and says where; a chain of
continuations, each resuming there, settles every routed agent exactly once, in
the index's order (moto's DynamoDB, the real store). And the checks that prove it
fail for a sweep that ignores its budget, its resume point, or part of its rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from agent_channel.config import CHANNEL_AGENT_MODEL, settings
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.presence import rules, sweep_plan
from agent_channel.presence.dynamodb import DynamoPresenceStore
from agent_channel.presence.model import Presence
from agent_channel.storage import schema
from tests.support.clock import FakeClock
from tests.support.fixtures import World
from tests.support.gateway import Gateway

SHARDS = 3
"""Few index shards, so each holds several agents and a sweep can stop inside one."""
AGENTS = 11

Sweep = Callable[..., rules.Swept]


class ReadingStore(DynamoPresenceStore):
    """The real store, remembering which agents were read (a settle reads its agent
    once when nothing races it): the order in which a sweep settled them."""

    def __init__(self) -> None:
        self.reads: list[int] = []

    def read(self, agent_id: int) -> Presence | None:
        self.reads.append(agent_id)
        return super().read(agent_id)


class Budget:
    """Time left that runs out after ``looks`` looks at it: a stand-in for an
    invocation's remaining time."""

    def __init__(self, looks: int) -> None:
        self.looks = looks

    def __call__(self) -> float:
        self.looks -= 1
        return 1.0 if self.looks >= 0 else 0.0


@pytest.fixture(autouse=True)
def few_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "ROUTED_SHARDS", SHARDS)


def routed_fleet(world: World, clock: FakeClock) -> list[int]:
    """AGENTS routed agents, in the index's order: shard by shard, each shard by its
    sort key (the id as a string, so 10 before 7). The plugins of all but every
    third crashed; those of every third are alive, so they stay in the index when
    swept (a continuation that started its shard over would sweep them again)."""
    gateway = Gateway()
    agents = [
        accounts.create_agent(f"a{index}", world.owner_id, CHANNEL_AGENT_MODEL).user_id
        for index in range(AGENTS)
    ]

    def connect(agent_id: int) -> None:
        query = {"agent_id": str(agent_id), "session_id": "s"}
        assert gateway.connect(query, token=world.owner_token).status == 200

    gone = crashed(agents)
    for agent_id in gone:
        connect(agent_id)
    clock.advance(settings().stale_after_seconds + 1)
    for agent_id in set(agents) - set(gone):
        connect(agent_id)
    return sorted(agents, key=lambda a: (a % SHARDS, schema.agent_sort(a)))


def crashed(agents: list[int]) -> list[int]:
    alive = set(sorted(agents)[2::3])
    return [agent_id for agent_id in agents if agent_id not in alive]


def sweep_in_hops(sweep: Sweep, looks: int) -> tuple[list[list[int]], list[rules.Swept]]:
    """Sweep every shard as a chain of invocations, each with a budget of ``looks``
    looks, each continuing where the previous one stopped: the agents each hop
    settled, in order, and what each hop returned."""
    store = ReadingStore()
    shards: tuple[int, ...] = tuple(sweep_plan.every_shard())
    resume: sweep_plan.Resume | None = None
    hops: list[list[int]] = []
    results: list[rules.Swept] = []
    while len(hops) <= AGENTS:
        store.reads = []
        swept = sweep(
            store,
            wiring.grace_scheduler(),
            settings(),
            shards,
            resume=resume,
            budget=Budget(looks),
        )
        hops.append(store.reads)
        results.append(swept)
        if not swept.rest:
            break
        shards, resume = swept.rest, swept.resume
    return hops, results


def check_each_agent_settled_once_in_order(
    agents: list[int], hops: list[list[int]], results: list[rules.Swept]
) -> None:
    settled = [agent_id for hop in hops for agent_id in hop]
    assert len(hops) > 1, "the sweep never stopped at its budget"
    assert all(hops), "a hop settled nothing: a chain must always move on"
    twice = sorted({a for a in settled if settled.count(a) > 1})
    assert not twice, f"swept twice in one chain: {twice}"
    skipped = [a for a in agents if a not in settled]
    assert not skipped, f"skipped: {skipped}"
    assert settled == agents, "not in the index's order"
    outcomes: dict[str, int] = {}
    for swept in results:
        for outcome, number in swept.outcomes.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + number
    gone = crashed(agents)
    assert outcomes == {"last_out": len(gone), "sibling_remains": AGENTS - len(gone)}
    for agent_id in agents:
        assert wiring.presence_store().read(agent_id).routing_on == (agent_id not in gone)


@pytest.mark.parametrize("looks", [0, 1, 2, 4])
def test_a_sweep_stops_at_its_budget_and_its_continuations_settle_exactly_the_rest(
    world: World, fake_clock: FakeClock, looks: int
) -> None:
    agents = routed_fleet(world, fake_clock)
    hops, results = sweep_in_hops(rules.sweep, looks)
    check_each_agent_settled_once_in_order(agents, hops, results)
    for hop, swept in zip(hops, results[:-1], strict=False):
        # The budget is looked at before each settle but the first (and before
        # each shard but the first), so each hop settles one more than it may look.
        assert len(hop) <= looks + 1
        assert swept.rest, "only the last hop finishes"
        if swept.resume is not None:
            assert swept.resume.shard == swept.rest[0]
            assert swept.resume.after == hop[-1], "the resume point is the last agent settled"


def test_with_zero_budget_each_hop_settles_one_agent(world: World, fake_clock: FakeClock) -> None:
    agents = routed_fleet(world, fake_clock)
    hops, _ = sweep_in_hops(rules.sweep, 0)
    assert hops == [[agent_id] for agent_id in agents]


def test_a_sweep_with_time_left_finishes_in_one_invocation(
    world: World, fake_clock: FakeClock
) -> None:
    agents = routed_fleet(world, fake_clock)
    store = ReadingStore()
    swept = rules.sweep(
        store, wiring.grace_scheduler(), settings(), sweep_plan.every_shard(), budget=lambda: 30.0
    )
    gone = len(crashed(agents))
    assert swept == rules.Swept({"last_out": gone, "sibling_remains": AGENTS - gone})
    assert store.reads == agents


def test_a_stop_between_shards_resumes_at_the_next_shard_start(
    world: World, fake_clock: FakeClock
) -> None:
    agents = routed_fleet(world, fake_clock)
    first_shard = [a for a in agents if a % SHARDS == 0]
    # Looks before each settle but the first, then one at the next shard's start.
    swept = rules.sweep(
        ReadingStore(),
        wiring.grace_scheduler(),
        settings(),
        sweep_plan.every_shard(),
        budget=Budget(len(first_shard) - 1),
    )
    assert sum(swept.outcomes.values()) == len(first_shard)
    assert swept.rest == tuple(range(1, SHARDS))
    assert swept.resume is None


def ignoring_the_budget(*args: Any, budget: Any = None, **kwargs: Any) -> rules.Swept:
    return rules.sweep(*args, **kwargs)


def ignoring_the_resume_point(*args: Any, resume: Any = None, **kwargs: Any) -> rules.Swept:
    return rules.sweep(*args, **kwargs)


def dropping_the_unfinished_shard(*args: Any, **kwargs: Any) -> rules.Swept:
    swept = rules.sweep(*args, **kwargs)
    if swept.resume is None:
        return swept
    return rules.Swept(swept.outcomes, swept.rest[1:])


@pytest.mark.parametrize(
    ("mutant", "failure"),
    [
        (ignoring_the_budget, "never stopped at its budget"),
        (ignoring_the_resume_point, "swept twice"),
        (dropping_the_unfinished_shard, "skipped"),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_the_check_fails_for_a_sweep_that_mishandles_its_budget_or_rest(
    world: World, fake_clock: FakeClock, mutant: Sweep, failure: str
) -> None:
    agents = routed_fleet(world, fake_clock)
    hops, results = sweep_in_hops(mutant, 1)
    with pytest.raises(AssertionError, match=failure):
        check_each_agent_settled_once_in_order(agents, hops, results)
