"""cancel_offline against moto: every recheck branch, scoping, races, idempotency,
the task.cancelled event, and the handler's input validation."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import pytest

from agent_channel.config import settings
from agent_channel.delivery.streams import agent_stream
from agent_channel.grace.cancellation import (
    REASON_AGENT_OFFLINE,
    REASON_SESSION_OFFLINE,
    Outcome,
    Result,
    cancel_offline,
)
from agent_channel.grace.dynamodb import DynamoTaskBook
from agent_channel.grace.scheduler import GraceCancellation
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.presence import rules as presence
from agent_channel.presence.model import Subscription
from agent_channel.storage import schema
from agent_channel.storage.records import LeaseRecord, UserRecord
from agent_channel.storage.transactions import _dynamodb
from agent_channel.tasks.dynamodb import DynamoTaskStore
from agent_channel.tasks.events import TASK_CANCELLED
from agent_channel.tasks.model import Status, Task, TransitionRefused
from tests.support.clock import FakeClock
from tests.support.event_tap import EventTap, install_event_tap
from tests.support.fixtures import World
from tests.support.gateway import invoke
from tests.support.interleave import (
    INTERLEAVED_SERVICES,
    TABLE_ONLY,
    Chooser,
    Run,
    explaining,
    explore,
    run_once,
)
from tests.support.presence_world import PreparedWorlds, PresenceWorld
from tests.support.schedules import grace_input

tasks = DynamoTaskStore()

STALE_AFTER = settings().stale_after_seconds
AGENT = "<the agent>"
"""Stands for the world's agent id in parametrised inputs."""


@pytest.fixture
def tap(aws: None) -> EventTap:
    return install_event_tap(settings().event_bus_name)


def run(request: GraceCancellation) -> Result:
    return cancel_offline(
        wiring.presence_store(),
        DynamoTaskBook(tasks),
        settings(),
        request,
    )


def delegated_task(topic_id: float, agent_id: float, tool_call: str = "Bash:ls") -> int:
    """Ids as PynamoDB's number attributes hand them out (typed float)."""
    task = tasks.create(topic_id=int(topic_id), agent_id=int(agent_id), content="do it")
    return int(tasks.delegate(tasks.start(task), tool_call).task_id)


def waiting_task(topic_id: float, agent_id: float, waiting: Status) -> int:
    task = tasks.create(
        topic_id=int(topic_id), agent_id=int(agent_id), content="later", status=waiting
    )
    return int(task.task_id)


def running_task(topic_id: float, agent_id: float) -> int:
    task = tasks.create(topic_id=int(topic_id), agent_id=int(agent_id), content="busy")
    return int(tasks.start(task).task_id)


def status(task_id: int) -> str:
    task = tasks.get(task_id)
    assert task is not None
    return str(task.status)


def connect(world: World, connection_id: str, session_id: str = "") -> str:
    subscription = Subscription(connection_id, world.owner_id, world.agent_id, session_id)
    return presence.subscribe(wiring.presence_store(), wiring.grace_scheduler(), subscription)


def drop(world: World, connection_id: str) -> presence.Settled:
    return presence.disconnect(
        wiring.presence_store(),
        wiring.grace_scheduler(),
        settings(),
        connection_id=connection_id,
        stream=agent_stream(world.agent_id),
        agent_id=world.agent_id,
        holds_lease=True,
    )


def put_lease(agent_id: int, connection_id: str, session_id: str, last_seen_at: float) -> None:
    """A lease written directly, for presence states the handlers pass through only
    transiently (routing off while a lease exists)."""
    LeaseRecord(
        *schema.lease_key(agent_id, connection_id),
        agent_id=agent_id,
        connection_id=connection_id,
        token="feedfacefeedface",
        session_id=session_id,
        last_seen_at=last_seen_at,
    ).save()


def lease_ids(agent_id: int) -> set[str]:
    seen = wiring.presence_store().read(agent_id)
    assert seen is not None
    return {lease.connection_id for lease in seen.leases}


def offline_agent(world: World, fake_clock: FakeClock) -> str:
    """Connect and drop the agent's only socket; the token the grace carries."""
    token = connect(world, "c-1", "s1")
    assert drop(world, "c-1") is presence.Settled.LAST_OUT
    fake_clock.advance(settings().grace_seconds)
    return token


@contextmanager
def before_transaction(
    action: Callable[[], object], when: Callable[[str], bool]
) -> Iterator[list[str]]:
    """Run ``action`` once, just before the first TransactWriteItems whose request
    matches ``when``: the interleaving point of two Lambda instances."""
    events = _dynamodb().client.meta.events
    fired: list[str] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        # PynamoDB hands botocore an already serialised body.
        body = params.get("body", b"")
        request = body.decode() if isinstance(body, bytes) else json.dumps(body)
        if fired or not when(request):
            return
        fired.append(request)  # first, so the action's own transaction passes through
        action()

    events.register("before-call.dynamodb.TransactWriteItems", hook, unique_id="interleave")
    try:
        yield fired
    finally:
        events.unregister("before-call.dynamodb.TransactWriteItems", unique_id="interleave")


def is_cancel(request: str) -> bool:
    # The cancel moves the task's status index entry to ...#STATUS#cancelled.
    return "#STATUS#cancelled" in request


# --- agent-wide -----------------------------------------------------------------


def test_agent_wide_cancels_every_delegated_task_of_the_agent_only(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    other_topic = accounts.create_topic(world.owner_id, "other", primary_agent_id=world.agent_id)
    sibling_agent = accounts.create_agent("sibling", world.owner_id)
    first = delegated_task(world.topic_id, world.agent_id)
    second = delegated_task(other_topic.topic_id, world.agent_id)
    busy = running_task(world.topic_id, world.agent_id)
    queued = tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="q")
    foreign = delegated_task(world.topic_id, sibling_agent.user_id)
    token = offline_agent(world, fake_clock)

    result = run(GraceCancellation(world.agent_id, token))

    assert result.outcome is Outcome.CANCELLED
    assert sorted(result.cancelled) == sorted([first, second])
    for task_id in (first, second):
        task = tasks.get(task_id)
        assert task is not None
        assert task.status == "cancelled"
        assert task.pending_tool_call is None
    assert status(busy) == "running"
    assert status(int(queued.task_id)) == "queued"
    assert status(foreign) == "delegated"
    # Slots live in the table: a fresh query shows only the running task's is held.
    assert tasks.held_slots(world.agent_id) == [busy]
    assert tasks.held_slots(int(sibling_agent.user_id)) == [foreign]
    published = tap.drain()
    assert sorted(int(event["detail"]["task_id"]) for event in published) == sorted([first, second])
    for event in published:
        assert event["source"] == "agent-channel"
        assert event["detail-type"] == TASK_CANCELLED
        assert int(event["detail"]["agent_id"]) == world.agent_id
        assert event["detail"]["reason"] == REASON_AGENT_OFFLINE
        assert float(event["detail"]["cancelled_at"]) == fake_clock.value
    topics = {
        int(event["detail"]["task_id"]): int(event["detail"]["topic_id"]) for event in published
    }
    assert topics == {first: world.topic_id, second: other_topic.topic_id}


def test_routing_back_on_cancels_nothing(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    task_id = delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)
    connect(world, "c-2", "s1")

    result = run(GraceCancellation(world.agent_id, token))

    assert result.outcome is Outcome.ROUTED_AGAIN
    assert result.cancelled == []
    assert status(task_id) == "delegated"
    assert tasks.held_slots(world.agent_id) == [task_id]
    assert tap.drain() == []


def test_a_live_lease_left_after_reaping_cancels_nothing(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    task_id = delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)
    now = fake_clock.value
    put_lease(world.agent_id, "crashed", "s9", now - STALE_AFTER - 1)
    put_lease(world.agent_id, "alive", "s8", now - 1)

    result = run(GraceCancellation(world.agent_id, token))

    assert result.outcome is Outcome.LIVE_LEASE
    assert status(task_id) == "delegated"
    assert lease_ids(world.agent_id) == {"alive"}, "the stale lease is reaped, the live one kept"
    assert tap.drain() == []


def test_a_stale_lease_does_not_hold_the_cancellation_back(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    task_id = delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)
    put_lease(world.agent_id, "crashed", "s9", fake_clock.value - STALE_AFTER - 1)

    result = run(GraceCancellation(world.agent_id, token))

    assert result.outcome is Outcome.CANCELLED
    assert result.cancelled == [task_id]
    assert lease_ids(world.agent_id) == set()
    assert len(tap.drain()) == 1


def test_a_newer_subscription_token_cancels_nothing(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    task_id = delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)
    # Routing off, but the agent's token is not the one this schedule carries.
    UserRecord(*schema.user_key(world.agent_id)).update(
        actions=[UserRecord.routing_subscription_token.set("0123456789abcdef")]
    )

    result = run(GraceCancellation(world.agent_id, token))

    assert result.outcome is Outcome.TOKEN_MISMATCH
    assert status(task_id) == "delegated"
    assert tap.drain() == []


def test_the_same_token_set_does_not_hold_the_cancellation_back(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    task_id = delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)
    UserRecord(*schema.user_key(world.agent_id)).update(
        actions=[UserRecord.routing_subscription_token.set(token)]
    )

    assert run(GraceCancellation(world.agent_id, token)).cancelled == [task_id]


def test_an_unknown_agent_changes_nothing(world: World, tap: EventTap) -> None:
    task_id = delegated_task(world.topic_id, world.agent_id)

    result = run(GraceCancellation(987654, "0123456789abcdef"))

    assert result.outcome is Outcome.NO_AGENT
    assert status(task_id) == "delegated"


# --- session-scoped --------------------------------------------------------------


@pytest.fixture
def two_sessions(world: World) -> dict[str, int]:
    """The agent serves sessions s1 and s2, each with a private topic and a delegated
    task there, plus a delegated task on a shared topic. s1's topic also has a queue:
    a running task (holding a slot), a pending and a queued one. s1's socket drops."""
    t1 = accounts.create_topic(
        world.owner_id, "s1", primary_agent_id=world.agent_id, session_id="s1"
    )
    t2 = accounts.create_topic(
        world.owner_id, "s2", primary_agent_id=world.agent_id, session_id="s2"
    )
    ids = {
        "s1_task": delegated_task(t1.topic_id, world.agent_id),
        "s1_busy": running_task(t1.topic_id, world.agent_id),
        "s1_pending": waiting_task(t1.topic_id, world.agent_id, Status.PENDING),
        "s1_queued": waiting_task(t1.topic_id, world.agent_id, Status.QUEUED),
        "s2_task": delegated_task(t2.topic_id, world.agent_id),
        "s2_queued": waiting_task(t2.topic_id, world.agent_id, Status.QUEUED),
        "shared_task": delegated_task(world.topic_id, world.agent_id),
        "shared_queued": waiting_task(world.topic_id, world.agent_id, Status.QUEUED),
        "s1_topic": int(t1.topic_id),
    }
    connect(world, "c-s1", "s1")
    connect(world, "c-s2", "s2")
    assert drop(world, "c-s1") is presence.Settled.SIBLING_REMAINS
    return ids


S1_QUEUE = ("s1_busy", "s1_pending", "s1_queued")


def test_session_scope_cancels_only_that_sessions_topic(
    world: World, fake_clock: FakeClock, two_sessions: dict[str, int], tap: EventTap
) -> None:
    fake_clock.advance(settings().grace_seconds)

    result = run(GraceCancellation(world.agent_id, "ignored", "s1"))

    assert result.outcome is Outcome.CANCELLED
    s1_work = [two_sessions[key] for key in (*S1_QUEUE, "s1_task")]
    assert sorted(result.cancelled) == sorted(s1_work)
    for task_id in s1_work:
        assert status(task_id) == "cancelled"
    for key in ("s2_task", "shared_task"):
        assert status(two_sessions[key]) == "delegated"
    for key in ("s2_queued", "shared_queued"):
        assert status(two_sessions[key]) == "queued"
    published = tap.drain()
    assert sorted(int(event["detail"]["task_id"]) for event in published) == sorted(s1_work)
    for event in published:
        assert int(event["detail"]["topic_id"]) == two_sessions["s1_topic"]
        assert event["detail"]["reason"] == REASON_SESSION_OFFLINE
    seen = wiring.presence_store().read(world.agent_id)
    assert seen is not None
    assert seen.routing_on, "a session grace never touches routing"


def test_session_scope_drains_the_queue_before_the_delegated_work(
    world: World, fake_clock: FakeClock, two_sessions: dict[str, int], tap: EventTap
) -> None:
    """Cancelling the delegated task first would invite the backend to promote the
    next queued task of the topic to a session that is gone."""
    fake_clock.advance(settings().grace_seconds)

    result = run(GraceCancellation(world.agent_id, "ignored", "s1"))

    assert result.cancelled[-1] == two_sessions["s1_task"]
    assert sorted(result.cancelled[:-1]) == sorted(two_sessions[key] for key in S1_QUEUE)
    published = [event["detail"] for event in tap.drain()]
    assert [int(detail["task_id"]) for detail in published] == result.cancelled
    previous = {int(detail["task_id"]): detail["previous_status"] for detail in published}
    assert previous == {
        two_sessions["s1_busy"]: "running",
        two_sessions["s1_pending"]: "pending",
        two_sessions["s1_queued"]: "queued",
        two_sessions["s1_task"]: "delegated",
    }
    # The running task's slot and the delegated task's slot are both released;
    # the other sessions' delegated tasks keep theirs.
    assert sorted(tasks.held_slots(world.agent_id)) == sorted(
        [two_sessions["s2_task"], two_sessions["shared_task"]]
    )


def test_the_queue_drain_is_conditioned_on_the_presence_the_recheck_read(
    world: World, fake_clock: FakeClock, two_sessions: dict[str, int], tap: EventTap
) -> None:
    """s1 comes back between the recheck and the first cancel of its queue: that
    cancel is refused, the recheck sees the session back, and nothing is cancelled."""
    fake_clock.advance(settings().grace_seconds)

    with before_transaction(lambda: connect(world, "c-s1-back", "s1"), is_cancel) as fired:
        result = run(GraceCancellation(world.agent_id, "ignored", "s1"))

    assert fired
    assert result.outcome is Outcome.SESSION_BACK
    assert result.cancelled == []
    assert status(two_sessions["s1_task"]) == "delegated"
    assert status(two_sessions["s1_busy"]) == "running"
    assert status(two_sessions["s1_queued"]) == "queued"
    assert two_sessions["s1_busy"] in tasks.held_slots(world.agent_id)
    assert tap.drain() == []


def test_the_same_session_reconnected_cancels_nothing(
    world: World, fake_clock: FakeClock, two_sessions: dict[str, int], tap: EventTap
) -> None:
    connect(world, "c-s1-again", "s1")
    fake_clock.advance(settings().grace_seconds)

    result = run(GraceCancellation(world.agent_id, "ignored", "s1"))

    assert result.outcome is Outcome.SESSION_BACK
    assert status(two_sessions["s1_task"]) == "delegated"
    assert tap.drain() == []


def test_a_session_back_but_stale_again_is_reaped_and_cancelled(
    world: World, fake_clock: FakeClock, two_sessions: dict[str, int], tap: EventTap
) -> None:
    connect(world, "c-s1-again", "s1")
    fake_clock.advance(STALE_AFTER + 1)
    # s2 keeps its heartbeat; the reconnected s1 went silent without a $disconnect.
    assert wiring.presence_store().touch(world.agent_id, "c-s2", fake_clock.value)

    result = run(GraceCancellation(world.agent_id, "ignored", "s1"))

    assert result.outcome is Outcome.CANCELLED
    assert result.cancelled[-1] == two_sessions["s1_task"]
    assert sorted(result.cancelled[:-1]) == sorted(two_sessions[key] for key in S1_QUEUE)
    assert lease_ids(world.agent_id) == {"c-s2"}
    assert status(two_sessions["s2_task"]) == "delegated"


def test_a_session_without_a_topic_cancels_nothing(
    world: World, fake_clock: FakeClock, two_sessions: dict[str, int], tap: EventTap
) -> None:
    result = run(GraceCancellation(world.agent_id, "ignored", "s-without-topic"))

    assert result.outcome is Outcome.NO_SESSION_TOPIC
    for key in ("s1_task", "s2_task", "shared_task"):
        assert status(two_sessions[key]) == "delegated"
    assert tap.drain() == []


def test_another_agents_session_topic_is_not_in_scope(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    sibling = accounts.create_agent("sibling", world.owner_id)
    theirs = accounts.create_topic(
        world.owner_id, "theirs", primary_agent_id=int(sibling.user_id), session_id="s1"
    )
    foreign = delegated_task(theirs.topic_id, sibling.user_id)

    result = run(GraceCancellation(world.agent_id, "ignored", "s1"))

    assert result.outcome is Outcome.NO_SESSION_TOPIC
    assert status(foreign) == "delegated"


# --- races and repeats -------------------------------------------------------------


def test_a_reply_claimed_between_read_and_cancel_wins(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    task_id = delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)

    def reply() -> None:
        task = tasks.get(task_id)
        assert task is not None
        tasks.claim_reply(task)

    with before_transaction(reply, is_cancel) as fired:
        result = run(GraceCancellation(world.agent_id, token))

    assert fired, "the claim ran between cancel_offline's read and its conditional cancel"
    assert result.outcome is Outcome.CANCELLED
    assert result.cancelled == []
    assert result.lost == [task_id]
    task = tasks.get(task_id)
    assert task is not None
    assert task.status == "done"
    assert task.pending_tool_call is None
    assert tasks.held_slots(world.agent_id) == []
    assert tap.drain() == [], "no task.cancelled for a task that was done"


def test_a_subscribe_between_recheck_and_cancel_wins(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    task_id = delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)

    with before_transaction(lambda: connect(world, "c-back", "s1"), is_cancel) as fired:
        result = run(GraceCancellation(world.agent_id, token))

    assert fired
    # The cancel was conditioned on the presence it rechecked; the retry saw routing.
    assert result.outcome is Outcome.ROUTED_AGAIN
    assert result.cancelled == []
    assert status(task_id) == "delegated"
    assert tasks.held_slots(world.agent_id) == [task_id]
    assert tap.drain() == []


def test_a_sibling_subscribe_during_a_session_cancel_only_delays_it(
    world: World, fake_clock: FakeClock, two_sessions: dict[str, int], tap: EventTap
) -> None:
    with before_transaction(lambda: connect(world, "c-s3", "s3"), is_cancel) as fired:
        result = run(GraceCancellation(world.agent_id, "ignored", "s1"))

    assert fired
    assert result.outcome is Outcome.CANCELLED
    assert result.cancelled[-1] == two_sessions["s1_task"]
    assert len(result.cancelled) == 1 + len(S1_QUEUE)
    assert len(tap.drain()) == 1 + len(S1_QUEUE), "one event per task, none twice"


def test_a_duplicate_invocation_is_harmless(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    task_id = delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)
    request = GraceCancellation(world.agent_id, token)

    first = run(request)
    after_first = tasks.get(task_id)
    fake_clock.advance(60)
    second = run(request)

    assert first.cancelled == [task_id]
    assert second.outcome is Outcome.CANCELLED
    assert second.cancelled == []
    after_second = tasks.get(task_id)
    assert after_first is not None
    assert after_second is not None
    assert after_second.status == "cancelled"
    assert after_second.updated_at == after_first.updated_at, "the second run wrote nothing"
    assert len(tap.drain()) == 1, "one event, not two"


class CountingTaskStore(DynamoTaskStore):
    """The task store, counting how often a task is read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, task_id: int) -> Task | None:
        self.reads += 1
        return super().get(task_id)


def test_a_stale_index_entry_is_refused_not_cancelled_twice(
    world: World, fake_clock: FakeClock
) -> None:
    """The status index may lag: a task it still lists as delegated that is already
    cancelled is refused by the conditional transition. The refusal itself tells
    that the task was lost, with no further read."""
    task_id = delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)
    listed = DynamoTaskBook(tasks).delegated(world.agent_id)
    assert [task.task_id for task in listed] == [task_id]
    seen = wiring.presence_store().read(world.agent_id)
    assert seen is not None

    cutoff = fake_clock() - STALE_AFTER
    counting = CountingTaskStore()
    book = DynamoTaskBook(counting)
    verdicts = [book.cancel(listed[0], seen, cutoff, REASON_AGENT_OFFLINE) for _ in range(2)]

    assert [verdict.value for verdict in verdicts] == ["cancelled", "lost"]
    assert counting.reads == 0, "the refusal carried the task's status"
    assert token


def test_cancel_delegated_keeps_every_guard_and_the_reason_it_is_given(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    """The store's delegated -> cancelled passes its guards and reason on to the
    shared cancel: a presence version that moved, or a stale lease a heartbeat
    revived, refuses it; the lease seen exactly at the cutoff does not."""
    task_id = delegated_task(world.topic_id, world.agent_id)
    connect(world, "c-1", "s1")
    before = wiring.presence_store().read(world.agent_id)
    assert before is not None
    connect(world, "c-2", "s2")  # a subscribe since the read: the version moved
    seen = wiring.presence_store().read(world.agent_id)
    assert seen is not None
    assert seen.version != before.version
    seen_at = fake_clock() - STALE_AFTER
    put_lease(world.agent_id, "c-old", "s1", last_seen_at=seen_at)
    task = tasks.get(task_id)
    assert task is not None

    with pytest.raises(TransitionRefused) as moved:
        tasks.cancel_delegated(task, presence_version=before.version)
    assert moved.value.guard_failed
    with pytest.raises(TransitionRefused) as revived:
        # The lease was seen after this cutoff: a heartbeat since the recheck.
        tasks.cancel_delegated(
            task, presence_version=seen.version, stale_leases=["c-old"], stale_before=seen_at - 1
        )
    assert revived.value.guard_failed
    assert status(task_id) == "delegated"
    assert tap.drain() == []

    cancelled = tasks.cancel_delegated(
        task,
        presence_version=seen.version,
        stale_leases=["c-old"],
        stale_before=seen_at,
        reason=REASON_AGENT_OFFLINE,
    )

    assert cancelled.status == "cancelled"
    assert status(task_id) == "cancelled"
    [event] = tap.drain()
    assert int(event["detail"]["task_id"]) == task_id
    assert event["detail"]["reason"] == REASON_AGENT_OFFLINE


def test_slot_release_is_idempotent_and_stored(world: World) -> None:
    task_id = running_task(world.topic_id, world.agent_id)
    assert tasks.held_slots(world.agent_id) == [task_id]
    tasks.release_slot(world.agent_id, task_id)
    tasks.release_slot(world.agent_id, task_id)
    assert tasks.held_slots(world.agent_id) == []


# --- the handler --------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        None,
        "agent_id=1",
        {},
        {"agent_id": "x", "subscription_token": "t"},
        {"agent_id": True, "subscription_token": "t"},
        {"agent_id": -3, "subscription_token": "t"},
        {"agent_id": AGENT},
        {"agent_id": AGENT, "subscription_token": 7},
        {"agent_id": AGENT, "subscription_token": "t" * 65},
        {"agent_id": AGENT, "subscription_token": "t", "session_id": ["s1"]},
    ],
)
def test_bad_input_is_an_error_result_and_writes_nothing(
    world: World, fake_clock: FakeClock, tap: EventTap, event: Any
) -> None:
    task_id = delegated_task(world.topic_id, world.agent_id)
    offline_agent(world, fake_clock)
    if isinstance(event, dict) and event.get("agent_id") == AGENT:
        event = {**event, "agent_id": world.agent_id}

    answer = invoke("cancel_offline", event)

    assert answer["ok"] is False
    assert answer["error"]
    assert status(task_id) == "delegated"
    assert tap.drain() == []


def test_the_handler_runs_the_rules_and_summarises(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    task_id = delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)

    answer = invoke(
        "cancel_offline", {"agent_id": str(world.agent_id), "subscription_token": token}
    )

    assert answer == {
        "ok": True,
        "scope": "agent",
        "outcome": "cancelled",
        "cancelled": [task_id],
        "lost": [],
    }
    assert len(tap.drain()) == 1


def test_the_handler_never_logs_the_token(
    world: World, fake_clock: FakeClock, tap: EventTap, capsys: pytest.CaptureFixture[str]
) -> None:
    delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)
    capsys.readouterr()

    invoke("cancel_offline", {"agent_id": world.agent_id, "subscription_token": token})
    invoke("cancel_offline", {"agent_id": "bad", "subscription_token": token})

    logged = capsys.readouterr()
    assert token not in logged.out + logged.err


# --- every interleaving (invariant 3) ------------------------------------------------


class Prepared(NamedTuple):
    """What a grace's race is run from: every actor that may take part, the work
    at stake, and the tap on the bus."""

    everyone: dict[str, Callable[[], Any]]
    task_id: int
    agent_id: int
    tap: EventTap


def grace_due_with_delegated_work(world: PresenceWorld) -> Prepared:
    """The agent's only session left with a task delegated; its grace is due. The
    grace may fire (twice), a reply land, the agent reconnect."""
    clock = world.clock
    tap = install_event_tap(settings().event_bus_name)
    world.open("a", "s1")
    agent_id = int(world.agent_id)
    reader = accounts.create_user("reader")
    topic = accounts.create_topic(int(reader.user_id), "t", primary_agent_id=agent_id)
    task_id = delegated_task(topic.topic_id, agent_id)
    world.disconnect("a")()
    payload = grace_input(agent_id, None)
    clock.advance(settings().grace_seconds)
    task = tasks.get(task_id)
    assert task is not None

    def reply() -> str:
        try:
            tasks.claim_reply(task)
        except TransitionRefused:
            return "refused"
        return "done"

    everyone: dict[str, Callable[[], Any]] = {
        "grace": lambda: invoke("cancel_offline", payload),
        "grace_again": lambda: invoke("cancel_offline", payload),
        "reply": reply,
        "back": world.subscribe("b", "s1"),
    }
    return Prepared(everyone, task_id, agent_id, tap)


def reply_or_reconnect_races_the_grace(
    worlds: PreparedWorlds[Prepared], choose: Chooser, actors: tuple[str, ...]
) -> Run:
    """The grace fires while a reply lands and/or the agent reconnects, as separate
    Lambda instances whose DynamoDB calls interleave in the order ``choose`` picks."""
    with worlds.world() as (_, (everyone, task_id, agent_id, tap)):
        # Three actors with every Scheduler and @connections request a point too run
        # past the time budget: those interleave over their DynamoDB requests.
        services = TABLE_ONLY if len(actors) > 2 else INTERLEAVED_SERVICES
        run = run_once([(name, everyone[name]) for name in actors], choose, services)
        with explaining(run):
            check_invariant_3(run, task_id, tap.afresh(), agent_id)
        return run


def check_invariant_3(run: Run, task_id: int, tap: EventTap, agent_id: int) -> None:
    """Cancelled at most once, only from delegated, and only by a grace whose
    rechecks still held when it committed; a reply that claimed first wins."""
    final = status(task_id)
    published = [int(event["detail"]["task_id"]) for event in tap.drain()]
    graces = [run.results[name] for name in ("grace", "grace_again") if name in run.results]
    assert all(grace["ok"] is True for grace in graces)
    assert published == ([task_id] if final == "cancelled" else []), published
    cancelled_by = [grace for grace in graces if grace["cancelled"]]
    assert len(cancelled_by) == (1 if final == "cancelled" else 0), graces
    assert all(grace["cancelled"] in ([], [task_id]) for grace in graces)
    if "reply" in run.results:
        assert (run.results["reply"] == "done") == (final == "done")
        assert final != "delegated", "the reply or the grace must have taken it"
    if final == "cancelled" and "back" in run.results:
        # The agent was back (its subscribe committed) only after the cancel did.
        [winner] = [
            name for name in ("grace", "grace_again") if run.results.get(name) in cancelled_by
        ]
        writes = [(who, op) for who, op in run.trace if op == "TransactWriteItems"]
        last_cancel = max(i for i, (who, _) in enumerate(writes) if who == winner)
        subscribe = next(i for i, (who, _) in enumerate(writes) if who == "back")
        assert last_cancel < subscribe, "cancelled although the agent had come back"
    if "back" in run.results and final == "delegated":
        assert all(grace["outcome"] in ("routed_again", "live_lease") for grace in graces)
    expected_slots = [task_id] if final == "delegated" else []
    assert tasks.held_slots(agent_id) == expected_slots


@pytest.mark.parametrize(
    "actors",
    [
        ("grace", "reply"),
        ("grace", "back"),
        ("grace", "grace_again"),
        ("grace", "reply", "back"),
    ],
    ids="+".join,
)
def test_every_interleaving_keeps_invariant_3(
    fake_clock: FakeClock, actors: tuple[str, ...]
) -> None:
    start = fake_clock.value
    outcomes: set[str] = set()
    worlds = PreparedWorlds(fake_clock, grace_due_with_delegated_work)

    def one(choose: Chooser) -> None:
        fake_clock.value = start
        run = reply_or_reconnect_races_the_grace(worlds, choose, actors)
        outcomes.add(run.results["grace"]["outcome"])

    runs = explore(one)
    assert runs > 1
    if "back" in actors:
        assert {"cancelled", "routed_again"} <= outcomes, outcomes


# --- every interleaving of a session-scoped drain -------------------------------------


class PreparedDrain(NamedTuple):
    everyone: dict[str, Callable[[], Any]]
    agent_id: int
    delegated: int
    queued: int
    tap: EventTap


def session_grace_due_beside_a_sibling(world: PresenceWorld) -> PreparedDrain:
    """s1 left while s2 stays; s1's own topic has a delegated task and a queued one,
    and s1's grace is due. The grace may fire, s1 come back, the backend start the
    queued task."""
    clock = world.clock
    tap = install_event_tap(settings().event_bus_name)
    world.open("a", "s1")
    world.open("b", "s2")
    agent_id = int(world.agent_id)
    owner = accounts.create_user("reader")
    topic = accounts.create_topic(
        int(owner.user_id), "s1", primary_agent_id=agent_id, session_id="s1"
    )
    delegated = delegated_task(topic.topic_id, agent_id)
    queued = waiting_task(topic.topic_id, agent_id, Status.QUEUED)
    world.disconnect("a")()
    payload = grace_input(agent_id, "s1")
    clock.advance(settings().grace_seconds)

    def start() -> str:
        task = tasks.get(queued)
        assert task is not None
        try:
            tasks.start(task)
        except TransitionRefused:
            return "refused"
        return "started"

    everyone: dict[str, Callable[[], Any]] = {
        "grace": lambda: invoke("cancel_offline", payload),
        "back": world.subscribe("c", "s1"),
        "start": start,
    }
    return PreparedDrain(everyone, agent_id, delegated, queued, tap)


def session_drain_races(
    worlds: PreparedWorlds[PreparedDrain], choose: Chooser, actors: tuple[str, ...]
) -> Run:
    """The session grace fires while s1 comes back and/or the backend starts the
    queued task, as separate Lambda instances interleaving their DynamoDB calls."""
    with worlds.world() as (_, (everyone, agent_id, delegated, queued, tap)):
        run = run_once([(name, everyone[name]) for name in actors], choose)
        with explaining(run):
            check_session_drain(run, agent_id, delegated, queued, tap.afresh())
        return run


def check_session_drain(
    run: Run, agent_id: int, delegated: int, queued: int, tap: EventTap
) -> None:
    grace = run.results["grace"]
    assert grace["ok"] is True
    cancelled = grace["cancelled"]
    final = {delegated: status(delegated), queued: status(queued)}
    assert sorted(cancelled) == sorted(t for t, s in final.items() if s == "cancelled")
    published = [int(event["detail"]["task_id"]) for event in tap.drain()]
    assert published == cancelled, "one event per cancelled task, in the order cancelled"
    if final[delegated] == "cancelled":
        # The queue goes first: no delegated cancel while the topic still had a queue.
        assert final[queued] == "cancelled", final
        assert cancelled.index(delegated) == len(cancelled) - 1
    if "back" in run.results and cancelled:
        # Every committed cancel held the rechecks: it came before s1's subscribe.
        writes = [who for who, op in run.trace if op == "TransactWriteItems"]
        before_back = writes[: writes.index("back")].count("grace")
        assert len(cancelled) <= before_back, "a cancel committed after s1 was back"
    held = set(tasks.held_slots(agent_id))
    assert (delegated in held) == (final[delegated] == "delegated")
    assert (queued in held) == (final[queued] == "running"), "a cancelled start left its slot"


@pytest.mark.parametrize("actors", [("grace", "back"), ("grace", "start")], ids="+".join)
def test_every_interleaving_of_a_session_drain(
    fake_clock: FakeClock, actors: tuple[str, ...]
) -> None:
    start = fake_clock.value
    outcomes: set[str] = set()
    worlds = PreparedWorlds(fake_clock, session_grace_due_beside_a_sibling)

    def one(choose: Chooser) -> None:
        fake_clock.value = start
        run = session_drain_races(worlds, choose, actors)
        outcomes.add(run.results["grace"]["outcome"])

    runs = explore(one)
    assert runs > 1
    print(f"{'+'.join(actors)}: {runs} interleavings, outcomes {sorted(outcomes)}")
    if "back" in actors:
        assert {"cancelled", "session_back"} <= outcomes, outcomes
