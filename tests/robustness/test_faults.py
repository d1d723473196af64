"""Fault injection: AWS failing as it does in production, and no lease, decision
or task lost or corrupted.

Two kinds of fault:

- below botocore's retry layer (``throttled_sends``): a fabricated HTTP answer
  in place of moto's, so the standard retry mode sees a real throttling error
  and retries it, as it would against DynamoDB or Scheduler;
- above it (``tests.support.faults.failing_requests``): an error that reaches
  the code under test, as when retries are exhausted or the error is not
  retryable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import botocore.client
import botocore.retries.standard
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from moto.core.botocore_stubber import BotocoreStubber, MockRawResponse

from agent_channel.config import settings
from agent_channel.grace.scheduler import schedule_name
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.presence import rules as presence
from agent_channel.presence.model import Presence
from agent_channel.storage import schema, transactions
from agent_channel.storage.records import DecisionRecord, Record
from agent_channel.tasks.dynamodb import DynamoTaskStore
from agent_channel.tasks.model import Status
from agent_channel_dev.instruments.lambda_context import LocalContext
from agent_channel_dev.instruments.request_counter import counting_requests
from agent_channel_dev.local.apigw_events import authorizer_event, route_event, scheduled_event
from tests.support import management_server
from tests.support.clock import FakeClock
from tests.support.event_tap import EventTap, install_event_tap
from tests.support.faults import failing_requests
from tests.support.fixtures import World
from tests.support.gateway import Gateway, invoke
from tests.support.logs import captured_log_lines
from tests.support.management_server import ManagementApi, connect_agent, connect_topic

tasks = DynamoTaskStore()

aws = management_server.aws
management = management_server.management

THROTTLES = ("ProvisionedThroughputExceededException", "ThrottlingException")


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # The retries are real; only their sleeping is skipped, to keep the suite fast.
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", _zero)
    monkeypatch.setattr(transactions, "pause", lambda seconds: None)


def _zero(self: Any, context: Any) -> float:
    return 0.0


@pytest.fixture
def tap(aws: None) -> EventTap:
    return install_event_tap(settings().event_bus_name)


# -- fault injectors -----------------------------------------------------------------------


@contextmanager
def throttled_sends(
    service: str, operations: set[str], code: str, *, times: int
) -> Iterator[list[str]]:
    """The first ``times`` HTTP sends of each of these operations are answered with
    a 400 throttling error instead of reaching moto; botocore's retry handler sees
    it. Keep ``times`` under the clients' attempt budget (PynamoDB: 4, the
    project's boto3 clients: 5) to test the retry, at or over it to exhaust it."""
    injected: list[str] = []
    original = BotocoreStubber.__call__

    def answer(self: BotocoreStubber, event_name: str, request: Any, **kwargs: Any) -> Any:
        _, svc, operation = event_name.split(".", 2)
        if svc == service and operation in operations and injected.count(operation) < times:
            injected.append(operation)
            body = json.dumps({"__type": code, "message": "injected throttling"}).encode()
            headers = {"x-amzn-ErrorType": code, "Content-Type": "application/x-amz-json-1.0"}
            return AWSResponse(request.url, 400, headers, MockRawResponse(body))  # type: ignore[arg-type]
        return original(self, event_name, request, **kwargs)

    BotocoreStubber.__call__ = answer  # type: ignore[method-assign]
    try:
        yield injected
    finally:
        BotocoreStubber.__call__ = original  # type: ignore[method-assign]


_original_call = botocore.client.BaseClient._make_api_call


@contextmanager
def cancelled_transactions(
    reasons: list[str], *, times: int = 1, after: int = 0
) -> Iterator[list[str]]:
    """TransactWriteItems fails with TransactionCanceledException carrying one
    reason per item, as DynamoDB does: ``reasons`` for the first items, "None" for
    the rest (e.g. TransactionConflict: a racing writer held that item). The first
    ``after`` transactions go through."""
    failed: list[str] = []
    seen: list[str] = []

    def failing(self: botocore.client.BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation == "TransactWriteItems":
            seen.append(operation)
        if operation == "TransactWriteItems" and len(seen) > after and len(failed) < times:
            failed.append(operation)
            count = len(params.get("TransactItems", []))
            codes = (reasons + ["None"] * count)[:count]
            raise ClientError(
                {
                    "Error": {
                        "Code": "TransactionCanceledException",
                        "Message": f"Transaction cancelled, reasons [{', '.join(codes)}]",
                    },
                    "CancellationReasons": [{"Code": code} for code in codes],
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                operation,
            )
        return _original_call(self, operation, params)

    botocore.client.BaseClient._make_api_call = failing  # type: ignore[method-assign]
    try:
        yield failed
    finally:
        botocore.client.BaseClient._make_api_call = _original_call  # type: ignore[method-assign]


@contextmanager
def before_nth(operation: str, n: int, action: Callable[[], None]) -> Iterator[list[bool]]:
    """Run ``action`` (a racing writer) just before the ``n``-th ``operation``."""
    seen: list[bool] = []
    calls = 0

    def racing(self: botocore.client.BaseClient, op: str, params: dict[str, Any]) -> Any:
        nonlocal calls
        if op == operation and not seen:
            calls += 1
            if calls == n:
                seen.append(True)
                botocore.client.BaseClient._make_api_call = _original_call  # type: ignore[method-assign]
                try:
                    action()
                finally:
                    botocore.client.BaseClient._make_api_call = racing  # type: ignore[method-assign]
        return _original_call(self, op, params)

    botocore.client.BaseClient._make_api_call = racing  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        botocore.client.BaseClient._make_api_call = _original_call  # type: ignore[method-assign]


# -- helpers ---------------------------------------------------------------------------------


def presence_of(world: World) -> Presence:
    found = wiring.presence_store().read(world.agent_id)
    assert found is not None
    return found


def check_invariant_1(world: World, now: float) -> None:
    seen = presence_of(world)
    live = seen.live_leases(now - settings().stale_after_seconds)
    assert bool(live) == seen.routing_on, f"routing on iff a live lease exists: {seen}"


def query(world: World, session: str = "s1") -> dict[str, str]:
    return {"agent_id": str(world.agent_id), "session_id": session}


def schedule_exists(name: str) -> bool:
    client = boto3.client("scheduler")
    try:
        client.get_schedule(Name=name, GroupName=settings().schedule_group)
    except client.exceptions.ResourceNotFoundException:
        return False
    return True


def table_items() -> list[str]:
    return sorted(
        json.dumps(r.attribute_values, default=str, sort_keys=True) for r in Record.scan()
    )


def delegated_task(world: World) -> int:
    task = tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="work")
    return int(tasks.delegate(tasks.start(task), "Bash:ls").task_id)


def backend(command: dict[str, Any]) -> dict[str, Any]:
    from functions.backend import app

    answer: dict[str, Any] = app.handler(command, LocalContext(function_name="backend"))
    return answer


# -- DynamoDB throttling: the standard retry mode retries ---------------------------------------


@pytest.mark.parametrize("code", THROTTLES)
def test_throttled_connect_heartbeat_and_disconnect_still_settle_presence(
    world: World, fake_clock: FakeClock, code: str
) -> None:
    gateway = Gateway()
    with throttled_sends("dynamodb", {"BatchGetItem", "TransactWriteItems"}, code, times=2) as hit:
        connected = gateway.connect(query(world), token=world.owner_token)
    assert hit, "the fault was injected"
    assert connected.status == 200
    [lease] = presence_of(world).leases
    assert presence_of(world).routing_on and lease.connection_id == connected.connection_id

    fake_clock.advance(20)
    with throttled_sends("dynamodb", {"UpdateItem"}, code, times=2) as hit:
        gateway.send(connected.connection_id, {"action": "heartbeat"})
    assert hit == ["UpdateItem", "UpdateItem"]
    assert presence_of(world).leases[0].last_seen_at == fake_clock()

    with throttled_sends(
        "dynamodb", {"DeleteItem", "Query", "TransactWriteItems"}, code, times=2
    ) as hit:
        assert gateway.disconnect(connected.connection_id)["body"] == "last_out"
    # Both transactions, the conditional delete and the consistent Query, twice each.
    assert len(hit) == 6
    after = presence_of(world)
    assert not after.routing_on and not after.leases
    assert schedule_exists(schedule_name(world.agent_id, None)), "the grace is not lost"


@pytest.mark.parametrize("code", THROTTLES)
def test_throttled_cancel_offline_cancels_each_task_exactly_once(
    world: World, fake_clock: FakeClock, tap: EventTap, code: str
) -> None:
    task_id = delegated_task(world)
    gateway = Gateway()
    only = gateway.connect(query(world), token=world.owner_token)
    token = presence_of(world).leases[0].token
    gateway.disconnect(only.connection_id)
    fake_clock.advance(settings().grace_seconds)

    with throttled_sends(
        "dynamodb", {"Query", "TransactWriteItems", "UpdateItem", "DeleteItem"}, code, times=2
    ) as hit:
        answer = invoke("cancel_offline", {"agent_id": world.agent_id, "subscription_token": token})
    assert len(hit) >= 4
    assert answer["ok"] and answer["cancelled"] == [task_id], answer
    task = tasks.get(task_id)
    assert task is not None and task.status == "cancelled" and task.pending_tool_call is None
    assert tasks.held_slots(world.agent_id) == []
    assert len(tap.drain()) == 1


def test_throttling_beyond_the_retry_budget_fails_connect_cleanly(world: World) -> None:
    before = table_items()
    budget = 4 * transactions.MAX_ATTEMPTS
    with throttled_sends(
        "dynamodb", {"TransactWriteItems"}, "ProvisionedThroughputExceededException", times=budget
    ) as hit:
        connected = Gateway().connect(query(world), token=world.owner_token)
    # Both retry layers gave up (PynamoDB's client: 4 attempts per request; the
    # store: MAX_ATTEMPTS requests); the client sees an error and reconnects. The
    # transaction is all or nothing: no half-made connection.
    assert len(hit) == budget
    assert connected.status == 500
    assert table_items() == before
    assert Gateway().connect(query(world), token=world.owner_token).status == 200


def test_a_throttled_scheduler_is_retried_and_the_grace_scheduled(world: World) -> None:
    gateway = Gateway()
    only = gateway.connect(query(world), token=world.owner_token)
    with throttled_sends("scheduler", {"CreateSchedule"}, "ThrottlingException", times=2) as hit:
        assert gateway.disconnect(only.connection_id)["body"] == "last_out"
    assert hit == ["CreateSchedule", "CreateSchedule"]
    assert schedule_exists(schedule_name(world.agent_id, None))


# -- TransactionCanceledException from a racing writer -------------------------------------


def test_a_subscribe_racing_the_last_one_out_wins_and_the_clear_is_retried(
    world: World, fake_clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = Gateway()
    first = gateway.connect(query(world, "s1"), token=world.owner_token)
    racer: list[str] = []

    def subscribe() -> None:
        racer.append(gateway.connect(query(world, "s2"), token=world.owner_token).connection_id)

    # $disconnect: drop_connection (1st transaction), DeleteItem, Query, then the
    # clear (2nd transaction), which the racing subscribe makes fail its condition.
    capsys.readouterr()
    with before_nth("TransactWriteItems", 2, subscribe) as raced:
        outcome = gateway.disconnect(first.connection_id)["body"]
    printed = capsys.readouterr().out
    assert raced
    assert outcome == "sibling_remains", "the retry read the new lease"
    after = presence_of(world)
    assert after.routing_on
    assert [lease.connection_id for lease in after.leases] == racer
    check_invariant_1(world, fake_clock())
    assert not schedule_exists(schedule_name(world.agent_id, None))
    # The retry is counted: the PresenceRetries metric, in the EMF line the
    # function prints when it flushes its metrics.
    emf = [json.loads(line) for line in printed.splitlines() if '"_aws"' in line]
    assert any(
        line.get("PresenceRetries") == [1.0] or line.get("PresenceRetries") == 1.0 for line in emf
    ), emf


def test_a_heartbeat_racing_the_sweepers_reap_keeps_its_lease_and_the_rest_are_reaped(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    stale = {
        session: gateway.connect(query(world, session), token=world.owner_token).connection_id
        for session in ("slow", "crashed")
    }
    alive = gateway.connect(query(world, "alive"), token=world.owner_token).connection_id
    fake_clock.advance(settings().stale_after_seconds + 1)
    # Kept live by its heartbeat (not by a new subscribe, which would reap the two
    # stale siblings itself and leave the sweeper nothing to race).
    gateway.send(alive, {"action": "heartbeat"})
    # The sweeper reaps the stale leases in the order it read them (by lease key);
    # the first one's session is only slow, and its heartbeat lands just before the
    # first DeleteItem: that delete must fail and the next lease still be reaped.
    slow, crashed = sorted(
        stale, key=lambda session: schema.lease_key(world.agent_id, stale[session])
    )

    def heartbeat() -> None:
        gateway.send(stale[slow], {"action": "heartbeat"})

    with before_nth("DeleteItem", 1, heartbeat) as raced:
        swept = invoke("sweeper", scheduled_event())
    assert raced
    assert swept["outcomes"] == {"sibling_remains": 1}
    after = presence_of(world)
    assert sorted(lease.connection_id for lease in after.leases) == sorted([stale[slow], alive]), (
        "the refreshed lease was reaped, or the crashed one was not"
    )
    assert not schedule_exists(schedule_name(world.agent_id, slow)), "no grace for a live session"
    assert schedule_exists(schedule_name(world.agent_id, crashed))
    check_invariant_1(world, fake_clock())


@pytest.mark.parametrize("conflicts", [1, transactions.MAX_ATTEMPTS])
def test_a_conflicting_clear_is_retried_and_one_that_keeps_conflicting_is_repaired_by_the_sweeper(
    world: World, fake_clock: FakeClock, conflicts: int
) -> None:
    gateway = Gateway()
    only = gateway.connect(query(world), token=world.owner_token)
    token = presence_of(world).leases[0].token
    # The clear's transaction is cancelled by DynamoDB for a concurrent writer on
    # the agent item (TransactionConflict on that item, None on the others: not a
    # failed condition). The first transaction (dropping the connection) goes
    # through; the clear is cancelled ``conflicts`` times. Once is retried at
    # once; every attempt is logged, and the sweeper finishes the job.
    with (
        captured_log_lines() as lines,
        cancelled_transactions(["TransactionConflict"], times=conflicts, after=1) as failed,
    ):
        answer = gateway.disconnect(only.connection_id)
    assert answer["statusCode"] == 200
    assert len(failed) == conflicts
    if conflicts < transactions.MAX_ATTEMPTS:
        assert not any(line["level"] == "ERROR" for line in lines)
        assert not presence_of(world).routing_on
    else:
        assert any(line["level"] == "ERROR" for line in lines), "logged with context"
        half = presence_of(world)
        assert half.routing_on and not half.leases, "the lease went, routing stayed: half done"
        invoke("sweeper", scheduled_event())
    repaired = presence_of(world)
    assert not repaired.routing_on
    check_invariant_1(world, fake_clock())
    assert schedule_exists(schedule_name(world.agent_id, None))
    created = boto3.client("scheduler").get_schedule(
        Name=schedule_name(world.agent_id, None), GroupName=settings().schedule_group
    )
    assert json.loads(created["Target"]["Input"])["subscription_token"] == token


@pytest.mark.parametrize("reason", sorted(transactions.TRANSIENT_REASONS))
def test_a_transient_cancellation_of_connect_is_retried_and_one_that_persists_writes_nothing(
    world: World, reason: str
) -> None:
    with cancelled_transactions([reason]) as failed:
        connected = Gateway().connect(query(world), token=world.owner_token)
    assert failed and connected.status == 200
    before = table_items()
    with cancelled_transactions([reason], times=transactions.MAX_ATTEMPTS) as failed:
        refused = Gateway().connect(query(world), token=world.owner_token)
    assert len(failed) == transactions.MAX_ATTEMPTS and refused.status == 500
    assert table_items() == before


def test_a_conflicting_decision_is_retried_and_recorded_once(
    world: World, management: ManagementApi
) -> None:
    with cancelled_transactions(["None", "TransactionConflict"], times=2) as failed:
        answer = backend(
            {
                "op": "decide_permission",
                "agent_id": world.agent_id,
                "request_id": "r1",
                "behavior": "deny",
                "decided_by": world.owner_id,
            }
        )
    assert len(failed) == 2
    assert answer["ok"], answer
    record = DecisionRecord.get(*schema.decision_key(world.agent_id, "r1"), consistent_read=True)
    assert record.behavior == "deny"


# -- Scheduler failing during $disconnect (extends tests/test_presence_routes.py) -------------


def test_a_scheduler_conflict_on_create_updates_the_pending_grace(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    first = gateway.connect(query(world), token=world.owner_token)
    gateway.disconnect(first.connection_id)
    second = gateway.connect(query(world), token=world.owner_token)
    token = presence_of(world).leases[0].token
    # A grace of the same name is still pending (the courtesy withdraw failed).
    wiring.grace_scheduler().schedule(
        presence.GraceCancellation(world.agent_id, "old-token"), fake_clock() + 30
    )
    with counting_requests() as counter:
        assert gateway.disconnect(second.connection_id)["body"] == "last_out"
    assert counter.of("scheduler") == ["CreateSchedule", "UpdateSchedule"]
    created = boto3.client("scheduler").get_schedule(
        Name=schedule_name(world.agent_id, None), GroupName=settings().schedule_group
    )
    assert json.loads(created["Target"]["Input"])["subscription_token"] == token


@pytest.mark.parametrize("code", ["ConflictException", "InternalServerException"])
def test_a_scheduler_failure_with_a_sibling_left_keeps_routing_and_the_agent_grace_covers(
    world: World, fake_clock: FakeClock, code: str
) -> None:
    gateway = Gateway()
    leaving = gateway.connect(query(world, "s1"), token=world.owner_token)
    staying = gateway.connect(query(world, "s2"), token=world.owner_token)
    with failing_requests("scheduler", {"CreateSchedule", "UpdateSchedule"}, code) as failed:
        assert gateway.disconnect(leaving.connection_id)["body"] == "sibling_remains"
    assert failed
    assert presence_of(world).routing_on
    check_invariant_1(world, fake_clock())
    # The session grace is not owed (by design); the agent-wide grace of the last
    # one out covers that session's work too.
    assert gateway.disconnect(staying.connection_id)["body"] == "last_out"
    assert schedule_exists(schedule_name(world.agent_id, None))


def test_a_scheduler_outage_that_outlasts_a_sweep_is_paid_by_a_later_one(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    only = gateway.connect(query(world), token=world.owner_token)
    with failing_requests("scheduler", {"CreateSchedule", "UpdateSchedule"}, "ServiceUnavailable"):
        assert gateway.disconnect(only.connection_id)["body"] == "last_out"
        fake_clock.advance(60)
        invoke("sweeper", scheduled_event())  # Scheduler still down: still owed
    assert not schedule_exists(schedule_name(world.agent_id, None))
    fake_clock.advance(60)
    invoke("sweeper", scheduled_event())
    assert schedule_exists(schedule_name(world.agent_id, None))
    assert not presence_of(world).routing_on


# -- the Management API failing during fan-out -------------------------------------------------


def test_gone_and_broken_sockets_lose_no_decision(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    gateway, sink = Gateway(), management.sink
    gone = connect_agent(gateway, sink, world, "gone=", session_id="s1")
    broken = connect_agent(gateway, sink, world, "broken=", session_id="s2")
    healthy = connect_agent(gateway, sink, world, "ok=", session_id="s3")
    sink.hang_up(gone)
    # Open longer than the connect window: now a 410 proves the socket gone.
    fake_clock.advance(settings().connect_window_seconds)
    sink.break_connection(broken)

    answer = backend(
        {
            "op": "decide_permission",
            "agent_id": world.agent_id,
            "request_id": "r1",
            "behavior": "allow",
            "decided_by": world.owner_id,
        }
    )

    assert answer["ok"] and answer["delivered"] == [healthy], answer
    assert answer["gone"] == [gone] and answer["failed"] == [broken]
    # The 410 socket was disconnected as $disconnect would; the 500 one was kept.
    leases = {lease.connection_id for lease in presence_of(world).leases}
    assert leases == {broken, healthy}
    check_invariant_1(world, fake_clock())
    # The broken socket's plugin reconnects and replays: nothing was lost.
    sink.hang_up(broken)
    again = connect_agent(gateway, sink, world, "again=", session_id="s2")
    gateway.send(again, {"action": "replay_permissions", "request_ids": ["r1"]})
    assert [m["request_id"] for m in sink.json_messages(again)] == ["r1"]


def test_a_dispatch_whose_every_post_fails_is_delegated_not_lost(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    gateway, sink = Gateway(), management.sink
    broken = connect_agent(gateway, sink, world, "broken=")
    watcher = connect_topic(gateway, sink, world, "watch=")
    sink.hang_up(watcher)
    sink.break_connection(broken)
    task = tasks.start(tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="x"))

    answer = backend({"op": "dispatch", "task_id": int(task.task_id)})

    assert answer["ok"], answer
    assert answer["agent_stream"]["failed"] == [broken]
    assert answer["topic_stream"]["gone"] == [watcher]
    found = tasks.get(int(task.task_id))
    assert found is not None and found.status == "delegated"
    # Still routable: a 500 is not a disconnect. If the socket is really dead, its
    # lease goes stale, the sweeper clears routing and the grace takes the task back.
    assert presence_of(world).routing_on
    check_invariant_1(world, fake_clock())


def test_a_gone_last_socket_during_dispatch_leads_to_the_grace(
    world: World, management: ManagementApi, fake_clock: FakeClock, tap: EventTap
) -> None:
    gateway, sink = Gateway(), management.sink
    only = connect_agent(gateway, sink, world, "only=")
    task = tasks.start(tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="x"))
    sink.hang_up(only)
    # Open longer than the connect window: now a 410 proves the socket gone.
    fake_clock.advance(settings().connect_window_seconds)

    answer = backend({"op": "dispatch", "task_id": int(task.task_id)})

    assert answer["ok"] and answer["agent_stream"]["gone"] == [only]
    assert not presence_of(world).routing_on, "the gone socket was the last one out"
    check_invariant_1(world, fake_clock())
    grace = boto3.client("scheduler").get_schedule(
        Name=schedule_name(world.agent_id, None), GroupName=settings().schedule_group
    )
    fake_clock.advance(settings().grace_seconds)
    result = invoke("cancel_offline", json.loads(grace["Target"]["Input"]))
    assert result["cancelled"] == [int(task.task_id)]
    assert len(tap.drain()) == 1


def test_a_heartbeat_racing_the_sweepers_clear_keeps_the_agent_routed(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    only = gateway.connect(query(world), token=world.owner_token).connection_id
    fake_clock.advance(settings().stale_after_seconds + 1)

    def heartbeat() -> None:
        gateway.send(only, {"action": "heartbeat"})

    # The sweeper read the only lease as stale (its plugin was only slow); the
    # heartbeat lands before the clear's transaction. A heartbeat's touch leaves the
    # presence version as it was: only the lease's own condition stops the clear.
    with before_nth("TransactWriteItems", 1, heartbeat) as raced:
        swept = invoke("sweeper", scheduled_event())
    assert raced
    assert swept["outcomes"] == {"sibling_remains": 1}
    after = presence_of(world)
    assert after.routing_on, "the live session was left unroutable"
    assert [lease.connection_id for lease in after.leases] == [only]
    assert not schedule_exists(schedule_name(world.agent_id, None))
    check_invariant_1(world, fake_clock())


def test_a_sweep_that_unroutes_the_agent_under_a_dispatch_leaves_the_task_running(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    gateway, sink = Gateway(), management.sink
    connect_agent(gateway, sink, world, "only=")
    task = tasks.start(tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="x"))
    # The plugin crashed: no heartbeat and no $disconnect, so its connection item
    # stays and routing is still on when the dispatch reads them.
    fake_clock.advance(settings().stale_after_seconds + 1)

    def sweep() -> None:
        invoke("sweeper", scheduled_event())

    # The sweeper's clear lands between the dispatch's reads and its transition; the
    # clear leaves the presence version as it was, so only the routing condition
    # tells the transition that nobody serves the agent any more.
    with before_nth("TransactWriteItems", 1, sweep) as raced:
        answer = backend({"op": "dispatch", "task_id": int(task.task_id)})
    assert raced
    assert not presence_of(world).routing_on
    assert answer["ok"] is False and answer["error"] == "agent_not_routable", answer
    current = tasks.get(task.task_id)
    assert current is not None and current.status is Status.RUNNING


# -- every handler invoked twice with the same event -------------------------------------------


def test_the_authorizer_twice_gives_the_same_answer(world: World) -> None:
    event = authorizer_event("c1=", query={**query(world), "token": world.owner_token})
    assert invoke("authorize", event) == invoke("authorize", event)


def test_connect_delivered_twice_holds_one_connection_and_one_lease(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    first = gateway.connect(query(world), token=world.owner_token, connection_id="c1=")
    event = route_event(
        "$connect", "c1=", authorizer=gateway.contexts["c1="], query={**query(world)}
    )
    assert first.status == 200
    assert invoke("connect", event)["statusCode"] == 200
    seen = presence_of(world)
    assert [lease.connection_id for lease in seen.leases] == ["c1="]
    assert seen.subscription_token == seen.leases[0].token
    check_invariant_1(world, fake_clock())
    assert gateway.disconnect("c1=")["body"] == "last_out"
    assert not presence_of(world).leases


@pytest.mark.parametrize("route", ["heartbeat", "replay_permissions", "$default"])
def test_socket_routes_delivered_twice_change_nothing_twice(
    world: World, management: ManagementApi, fake_clock: FakeClock, route: str
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "c1=")
    backend(
        {
            "op": "decide_permission",
            "agent_id": world.agent_id,
            "request_id": "r1",
            "behavior": "allow",
            "decided_by": world.owner_id,
        }
    )
    body = {"heartbeat": {"action": "heartbeat"}}.get(
        route, {"action": route.strip("$"), "request_ids": ["r1"]}
    )
    event = route_event(route, socket, authorizer=gateway.contexts[socket], body=json.dumps(body))
    name = {"heartbeat": "heartbeat", "replay_permissions": "replay", "$default": "default"}[route]
    fake_clock.advance(5)
    invoke(name, event)
    after_first = table_items()
    invoke(name, event)
    assert table_items() == after_first
    check_invariant_1(world, fake_clock())
    # Replay and $default answer the same twice (replay: clients drop ids they no
    # longer hold); heartbeat answers nothing.
    messages = sink.json_messages(socket)[1:]
    if route == "heartbeat":
        assert messages == []
    else:
        assert len(messages) == 2 and messages[0] == messages[1]


def test_disconnect_delivered_twice_schedules_once(world: World) -> None:
    gateway = Gateway()
    only = gateway.connect(query(world), token=world.owner_token)
    event = route_event(
        "$disconnect", only.connection_id, authorizer=gateway.contexts[only.connection_id]
    )
    assert invoke("disconnect", event)["body"] == "last_out"
    with counting_requests() as counter:
        assert invoke("disconnect", event)["body"] == "stale_disconnect"
    assert counter.count("scheduler") == 0


def test_the_sweeper_twice_settles_once(world: World, fake_clock: FakeClock) -> None:
    Gateway().connect(query(world), token=world.owner_token)
    fake_clock.advance(settings().stale_after_seconds + 1)
    event = scheduled_event()
    assert invoke("sweeper", event)["outcomes"] == {"last_out": 1}
    with counting_requests() as counter:
        assert invoke("sweeper", event)["outcomes"] == {}
    assert counter.count("scheduler") == 0


def test_cancel_offline_twice_cancels_once(
    world: World, fake_clock: FakeClock, tap: EventTap
) -> None:
    task_id = delegated_task(world)
    gateway = Gateway()
    only = gateway.connect(query(world), token=world.owner_token)
    event = {"agent_id": world.agent_id, "subscription_token": presence_of(world).leases[0].token}
    gateway.disconnect(only.connection_id)
    assert invoke("cancel_offline", event)["cancelled"] == [task_id]
    after_first = table_items()
    second = invoke("cancel_offline", event)
    assert second["ok"] and second["cancelled"] == []
    assert table_items() == after_first
    assert len(tap.drain()) == 1


def test_backend_commands_delivered_twice_take_effect_once(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "c1=")
    task = tasks.start(tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="x"))
    task_id = int(task.task_id)
    decide = {
        "op": "decide_permission",
        "agent_id": world.agent_id,
        "request_id": "r1",
        "behavior": "allow",
        "decided_by": world.owner_id,
    }
    for command, second_error in (
        (decide, "already_decided"),
        ({"op": "dispatch", "task_id": task_id}, "invalid_transition"),
        ({"op": "claim_reply", "task_id": task_id}, "reply_duplicate"),
    ):
        assert backend(command)["ok"], command
        after_first = table_items()
        again = backend(command)
        assert again["ok"] is False and again["error"] == second_error, again
        assert table_items() == after_first, command
    kinds = [message["type"] for message in sink.json_messages(socket)]
    assert kinds == ["permission_decision", "dispatch"], "each pushed once"
    found = tasks.get(task_id)
    assert found is not None and found.status == "done"
    assert accounts.get_user(world.agent_id) is not None


# -- transient transaction failures are retried, never read as a refusal -----------------


@pytest.mark.parametrize("reason", sorted(transactions.TRANSIENT_REASONS))
def test_a_reply_met_by_a_transient_cancellation_is_claimed_not_refused(
    world: World, reason: str
) -> None:
    task_id = delegated_task(world)
    # DynamoDB names the item that met the conflict or throttling; the slot delete
    # and the task update of the claim report "None" and the reason respectively.
    with cancelled_transactions(["None", reason]) as failed:
        answer = backend({"op": "claim_reply", "task_id": task_id, "agent_id": world.agent_id})
    assert failed
    assert answer == {"ok": True, "op": "claim_reply", "task_id": task_id, "status": "done"}
    assert tasks.held_slots(world.agent_id) == []


def test_a_validation_error_is_a_fault_not_a_refusal_and_changes_nothing(world: World) -> None:
    task_id = delegated_task(world)
    before = table_items()
    with cancelled_transactions(["None", "ValidationError"]) as failed:
        answer = backend({"op": "claim_reply", "task_id": task_id})
    assert len(failed) == 1, "a fault is not retried"
    assert answer["ok"] is False, answer
    assert answer["error"] == "internal_error", "a fault is not a reply refusal"
    assert table_items() == before


def test_a_reply_really_refused_is_refused_once_without_retry(world: World) -> None:
    task_id = delegated_task(world)
    assert backend({"op": "claim_reply", "task_id": task_id})["ok"]
    with counting_requests() as counted:
        again = backend({"op": "claim_reply", "task_id": task_id})
    assert again["error"] == "reply_duplicate"
    assert counted.by_operation("dynamodb")["TransactWriteItems"] == 1


def test_a_transaction_conflict_on_a_single_item_write_is_retried(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    connected = gateway.connect(query(world), token=world.owner_token)
    fake_clock.advance(5)
    # A restore's touch (the Lambda) meets the lease while a transaction writes it.
    # The heartbeat's own UpdateItem runs in API Gateway, which retries nothing:
    # that heartbeat renews nothing, and the next one (or the client's restore)
    # does (docs/SCALE.md section 6).
    with failing_requests(
        "dynamodb", {"UpdateItem"}, "TransactionConflictException", times=2, status=400
    ) as failed:
        gateway.send(connected.connection_id, {"action": "restore"})
    assert len(failed) == 2
    assert presence_of(world).leases[0].last_seen_at == fake_clock()


def test_a_sweep_does_not_clear_again_and_erase_an_owed_graces_index_entry(
    world: World, fake_clock: FakeClock
) -> None:
    """A last one out is half done (connection and lease gone, routing still on)
    when a sweep reads the agent; the departure then clears routing and, Scheduler
    failing it, records the grace as owed under GRACE_OWED. The sweep's clear must
    not run on top of it: it would remove that index entry with routing's."""
    from agent_channel.config import settings as channel_settings
    from agent_channel.storage.records import UserRecord
    from tests.support.faults import SCHEDULER_UNAVAILABLE

    gateway = Gateway()
    only = gateway.connect(query(world), token=world.owner_token)
    store, scheduler = wiring.presence_store(), wiring.grace_scheduler()
    stream = presence_of(world).leases[0]
    store.drop_connection(only.connection_id, f"agent:{world.agent_id}")
    dropped = store.drop_lease(world.agent_id, stream.connection_id)
    assert dropped is not None

    def rest_of_the_departure() -> None:
        code, status = SCHEDULER_UNAVAILABLE
        with failing_requests("scheduler", {"CreateSchedule"}, code, status=status):
            presence.settle(store, scheduler, channel_settings(), world.agent_id, dropped=dropped)

    with before_nth("TransactWriteItems", 1, rest_of_the_departure) as raced:
        invoke("sweeper", scheduled_event())
    assert raced
    agent = UserRecord.get(*schema.user_key(world.agent_id), consistent_read=True)
    assert agent.routing_expression == ""
    assert agent.grace_owed_token == dropped.token
    assert agent.gsi1pk == schema.GRACE_OWED, "the owed grace lost its index entry"
    # And the next sweep pays it.
    invoke("sweeper", scheduled_event())
    assert schedule_exists(schedule_name(world.agent_id, None))
