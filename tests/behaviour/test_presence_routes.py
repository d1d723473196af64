"""Every rule of $connect, $disconnect, heartbeat and the sweeper, against moto."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from agent_channel.config import settings
from agent_channel.grace.scheduler import schedule_name
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.presence.dynamodb import GARBAGE_AFTER
from agent_channel.presence.model import Presence
from agent_channel.presence.store import MAX_STALE_PER_CLEAR
from agent_channel.storage import schema
from agent_channel.storage.records import ConnectionRecord, LeaseRecord, Record, UserRecord
from agent_channel_dev.instruments.request_counter import counting_requests
from agent_channel_dev.local.apigw_events import route_event, scheduled_event
from tests.support.clock import FakeClock
from tests.support.faults import failing_requests
from tests.support.fixtures import World, write_crashed_leases
from tests.support.gateway import Gateway, invoke
from tests.support.logs import captured_log_lines

READS = {"BatchGetItem", "GetItem", "Query"}


def presence(world: World) -> Presence:
    found = wiring.presence_store().read(world.agent_id)
    assert found is not None
    return found


def schedule(name: str) -> dict[str, Any] | None:
    client = boto3.client("scheduler")
    try:
        return client.get_schedule(Name=name, GroupName=settings().schedule_group)
    except client.exceptions.ResourceNotFoundException:
        return None


def agent_query(world: World, session: str = "s1") -> dict[str, str]:
    return {"agent_id": str(world.agent_id), "session_id": session}


# -- $connect rejections: the right status, and nothing written ----------------------


@pytest.mark.parametrize(
    ("query", "token_kind", "status"),
    [
        ({"agent_id": "AGENT"}, None, 401),
        ({"agent_id": "AGENT"}, "forged", 401),
        ({}, "owner", 400),
        ({"agent_id": "4x2"}, "owner", 400),
        ({"agent_id": "-1"}, "owner", 400),
        ({"topic_id": "seven"}, "owner", 400),
        ({"agent_id": "AGENT", "topic_id": "TOPIC"}, "owner", 400),
        ({"agent_id": "AGENT", "session_id": "has space"}, "owner", 400),
        ({"agent_id": "AGENT"}, "stranger", 403),
        ({"agent_id": "999999"}, "owner", 403),
        ({"topic_id": "TOPIC"}, "stranger", 403),
        ({"topic_id": "999999"}, "owner", 403),
    ],
)
def test_connect_rejections_write_nothing(
    world: World, query: dict[str, str], token_kind: str | None, status: int
) -> None:
    ids = {"AGENT": str(world.agent_id), "TOPIC": str(world.topic_id)}
    query = {key: ids.get(value, value) for key, value in query.items()}
    token = {
        None: None,
        "forged": "act_" + "A" * 43,
        "owner": world.owner_token,
        "stranger": world.stranger_token,
    }[token_kind]
    with counting_requests() as counter:
        result = Gateway().connect(query, token=token)
    assert result.status == status
    assert set(counter.of("dynamodb")) <= READS, "a rejection must write nothing"
    assert counter.count("scheduler") == 0


def test_a_foreign_agent_and_a_missing_one_get_the_same_answer(world: World) -> None:
    foreign = Gateway().connect({"agent_id": str(world.agent_id)}, token=world.stranger_token)
    missing = Gateway().connect({"agent_id": "424242"}, token=world.stranger_token)
    assert foreign.status == missing.status == 403


def test_revoked_token_is_refused(world: World) -> None:
    assert accounts.revoke_token(world.owner_token)
    assert Gateway().connect(agent_query(world), token=world.owner_token).status == 401


def test_header_and_query_tokens_must_agree(world: World) -> None:
    gateway = Gateway()
    agreeing = gateway.connect(
        agent_query(world), token=world.owner_token, header_token=world.owner_token
    )
    assert agreeing.status == 200
    clashing = gateway.connect(
        agent_query(world, "s2"), token=world.stranger_token, header_token=world.owner_token
    )
    assert clashing.status == 401


def test_token_in_the_header_alone_is_accepted(world: World) -> None:
    assert Gateway().connect(agent_query(world), header_token=world.owner_token).status == 200


def test_tokens_are_stored_only_as_digests(world: World) -> None:
    stored = json.dumps([r.attribute_values for r in Record.scan()], default=str)
    assert world.owner_token not in stored
    assert world.owner_token.removeprefix("act_") not in stored


# -- $connect acceptance ---------------------------------------------------------------


def test_channel_agent_connect_writes_connection_lease_and_routing_together(world: World) -> None:
    result = Gateway().connect(agent_query(world), token=world.owner_token)
    assert result.status == 200
    found = presence(world)
    assert found.routing_on
    [lease] = found.leases
    assert lease.connection_id == result.connection_id
    assert lease.session_id == "s1"
    assert len(lease.token) == 16 and int(lease.token, 16) >= 0
    assert found.subscription_token == lease.token


def test_non_channel_ai_agent_gets_a_stream_but_no_lease(world: World) -> None:
    result = Gateway().connect({"agent_id": str(world.other_ai_id)}, token=world.owner_token)
    assert result.status == 200
    other = wiring.presence_store().read(world.other_ai_id)
    assert other is not None and not other.leases and not other.routing_on
    connection = ConnectionRecord.get(*schema.connection_key(result.connection_id))
    assert connection.stream == f"agent:user:{world.other_ai_id}"
    assert not connection.holds_lease


def test_topic_reader_joins_the_topic_stream(world: World) -> None:
    topic = accounts.create_topic(world.owner_id, "shared", reader_ids=[world.stranger_id])
    result = Gateway().connect({"topic_id": str(topic.topic_id)}, token=world.stranger_token)
    assert result.status == 200
    connection = ConnectionRecord.get(*schema.connection_key(result.connection_id))
    assert connection.stream == f"agent:topic:{topic.topic_id}"


# -- $disconnect ---------------------------------------------------------------------


def test_a_sibling_keeps_routing_on_and_a_session_grace_is_scheduled(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    first = gateway.connect(agent_query(world, "s1"), token=world.owner_token)
    gateway.connect(agent_query(world, "s2"), token=world.owner_token)
    dropped_token = next(
        lease.token
        for lease in presence(world).leases
        if lease.connection_id == first.connection_id
    )
    assert gateway.disconnect(first.connection_id)["body"] == "sibling_remains"

    assert presence(world).routing_on
    assert [lease.session_id for lease in presence(world).leases] == ["s2"]
    assert schedule(schedule_name(world.agent_id, None)) is None
    created = schedule(schedule_name(world.agent_id, "s1"))
    assert created is not None
    assert json.loads(created["Target"]["Input"]) == {
        "agent_id": world.agent_id,
        "subscription_token": dropped_token,
        "session_id": "s1",
    }


def test_the_last_one_out_clears_routing_and_schedules_agent_wide_grace(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    only = gateway.connect(agent_query(world), token=world.owner_token)
    token = presence(world).leases[0].token
    assert gateway.disconnect(only.connection_id)["body"] == "last_out"

    after = presence(world)
    assert not after.routing_on and after.subscription_token is None and not after.leases
    created = schedule(schedule_name(world.agent_id, None))
    assert created is not None
    assert json.loads(created["Target"]["Input"]) == {
        "agent_id": world.agent_id,
        "subscription_token": token,
    }
    due = datetime.fromtimestamp(fake_clock() + settings().grace_seconds, tz=UTC)
    assert created["ScheduleExpression"] == f"at({due:%Y-%m-%dT%H:%M:%S})"
    assert created["ScheduleExpressionTimezone"] == "UTC"
    assert created["Target"]["Arn"] == settings().cancel_offline_arn
    assert created["ActionAfterCompletion"] == "DELETE"


def test_a_stale_disconnect_changes_nothing_and_schedules_nothing(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    old = gateway.connect(agent_query(world, "s1"), token=world.owner_token)
    fake_clock.advance(settings().stale_after_seconds + 1)
    invoke("sweeper", scheduled_event())  # reaps the crashed lease, clears routing
    fresh = gateway.connect(agent_query(world, "s1"), token=world.owner_token)
    before = presence(world)

    with counting_requests() as counter:
        outcome = gateway.disconnect(old.connection_id)["body"]
    assert outcome == "stale_disconnect"
    assert counter.count("scheduler") == 0
    after = presence(world)
    assert after == before
    assert [lease.connection_id for lease in after.leases] == [fresh.connection_id]


def test_a_duplicate_disconnect_is_harmless(world: World) -> None:
    gateway = Gateway()
    only = gateway.connect(agent_query(world), token=world.owner_token)
    assert gateway.disconnect(only.connection_id)["body"] == "last_out"
    with counting_requests() as counter:
        assert gateway.disconnect(only.connection_id)["body"] == "stale_disconnect"
    assert counter.count("scheduler") == 0
    assert not presence(world).routing_on


def test_a_crash_orphaned_lease_never_pins_routing_on(world: World, fake_clock: FakeClock) -> None:
    gateway = Gateway()
    gateway.connect(agent_query(world, "crashed"), token=world.owner_token)
    survivor = gateway.connect(agent_query(world, "alive"), token=world.owner_token)
    fake_clock.advance(settings().stale_after_seconds + 1)
    # The crashed plugin never sends $disconnect; the survivor leaves properly.
    assert gateway.disconnect(survivor.connection_id)["body"] == "last_out"
    after = presence(world)
    assert not after.routing_on
    assert not after.leases, "the crashed sibling's lease was reaped with the clear"


def test_the_sweeper_unroutes_an_agent_whose_plugins_all_crashed(
    world: World, fake_clock: FakeClock
) -> None:
    Gateway().connect(agent_query(world), token=world.owner_token)
    fake_clock.advance(settings().stale_after_seconds - 1)
    invoke("sweeper", scheduled_event())
    assert presence(world).routing_on, "still live: the sweeper must leave it alone"
    fake_clock.advance(2)
    invoke("sweeper", scheduled_event())
    assert not presence(world).routing_on
    assert schedule(schedule_name(world.agent_id, None)) is not None


def test_the_sweeper_unroutes_an_agent_with_more_crashed_sessions_than_one_clear_holds(
    world: World, fake_clock: FakeClock
) -> None:
    Gateway().connect(agent_query(world), token=world.owner_token)
    # More crashed sessions than one transaction holds beside the agent's item: the
    # sweeper reaps the excess first, then clears routing with a full transaction.
    write_crashed_leases(world.agent_id, MAX_STALE_PER_CLEAR + 20, fake_clock())
    fake_clock.advance(settings().stale_after_seconds + 1)
    swept = invoke("sweeper", scheduled_event())
    assert swept["outcomes"] == {"last_out": 1}
    after = presence(world)
    assert not after.routing_on and not after.leases
    assert schedule(schedule_name(world.agent_id, None)) is not None


def test_the_sweeper_reaps_a_crashed_session_while_a_sibling_lives(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    gateway.connect(agent_query(world, "crashed"), token=world.owner_token)
    fake_clock.advance(settings().stale_after_seconds + 1)
    alive = gateway.connect(agent_query(world, "alive"), token=world.owner_token)
    invoke("sweeper", scheduled_event())
    after = presence(world)
    assert after.routing_on
    assert [lease.connection_id for lease in after.leases] == [alive.connection_id]
    assert schedule(schedule_name(world.agent_id, "crashed")) is not None


# -- heartbeat -----------------------------------------------------------------------


def test_heartbeat_refreshes_the_lease(world: World, fake_clock: FakeClock) -> None:
    gateway = Gateway()
    result = gateway.connect(agent_query(world), token=world.owner_token)
    fake_clock.advance(30)
    assert gateway.send(result.connection_id, {"action": "heartbeat"}) is None, "one-way"
    assert presence(world).leases[0].last_seen_at == fake_clock()
    # The TTL moves with it: the backstop that collects a lease every delete missed.
    lease = LeaseRecord.get(*schema.lease_key(world.agent_id, result.connection_id))
    assert lease.expires_at == datetime.fromtimestamp(fake_clock(), tz=UTC) + GARBAGE_AFTER


def test_a_heartbeat_after_a_reap_renews_nothing_and_a_restore_brings_routing_back(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    result = gateway.connect(agent_query(world), token=world.owner_token)
    fake_clock.advance(settings().stale_after_seconds + 1)
    invoke("sweeper", scheduled_event())
    assert not presence(world).routing_on
    gateway.send(result.connection_id, {"action": "heartbeat"})
    assert not presence(world).leases, "a heartbeat never recreates a lease"
    assert gateway.send(result.connection_id, {"action": "restore"})["statusCode"] == 200
    restored = presence(world)
    assert restored.routing_on
    [lease] = restored.leases
    assert lease.connection_id == result.connection_id
    assert restored.subscription_token == lease.token
    assert schedule(schedule_name(world.agent_id, None)) is None, "pending grace withdrawn"


def test_heartbeat_never_resurrects_a_removed_connection(world: World) -> None:
    gateway = Gateway()
    result = gateway.connect(agent_query(world), token=world.owner_token)
    gateway.disconnect(result.connection_id)
    assert gateway.beat(result.connection_id)["statusCode"] == 200
    after = presence(world)
    assert not after.leases and not after.routing_on
    # A heartbeat that restores nothing must not withdraw the grace either: the last
    # one out scheduled it, and withdrawn, the agent's delegated work stays stranded.
    assert schedule(schedule_name(world.agent_id, None)) is not None, "grace still pending"


# -- handler hygiene -----------------------------------------------------------------


@pytest.mark.parametrize("route", ["connect", "disconnect", "heartbeat"])
@pytest.mark.parametrize("event", [None, [], "text", {}, {"requestContext": "x"}])
def test_malformed_events_get_an_api_gateway_answer(route: str, event: Any) -> None:
    answer = invoke(route, event)
    assert answer["statusCode"] == 400


def test_connect_without_authorizer_context_is_unauthorized(world: World) -> None:
    event = route_event("$connect", "c1=", query=agent_query(world))
    assert invoke("connect", event)["statusCode"] == 401


def test_every_log_line_names_connection_and_agent_and_no_token(world: World) -> None:
    gateway = Gateway()
    with captured_log_lines() as lines:
        result = gateway.connect(agent_query(world), token=world.owner_token)
        gateway.send(result.connection_id, {"action": "heartbeat"})
        gateway.disconnect(result.connection_id)
    route_lines = [line for line in lines if line.get("function_name") != "authorize"]
    assert route_lines
    for line in route_lines:
        assert line["connection_id"] == result.connection_id, line
        assert line["agent_id"] == world.agent_id, line
        assert line.get("request_id"), line
    assert world.owner_token not in json.dumps(lines)


# -- Scheduler unavailable during $disconnect ------------------------------------------


def test_a_scheduler_outage_still_clears_routing_and_the_sweeper_reschedules(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    only = gateway.connect(agent_query(world), token=world.owner_token)
    token = presence(world).leases[0].token
    with failing_requests(
        "scheduler", {"CreateSchedule", "UpdateSchedule"}, "ServiceUnavailable"
    ) as failed:
        assert gateway.disconnect(only.connection_id)["body"] == "last_out"
    assert failed, "the fault was injected"
    assert not presence(world).routing_on, "routing is cleared whatever Scheduler says"
    assert schedule(schedule_name(world.agent_id, None)) is None

    fake_clock.advance(60)
    invoke("sweeper", scheduled_event())
    created = schedule(schedule_name(world.agent_id, None))
    assert created is not None, "the sweeper paid the owed grace"
    assert json.loads(created["Target"]["Input"])["subscription_token"] == token
    due = datetime.fromtimestamp(fake_clock(), tz=UTC)
    assert created["ScheduleExpression"] == f"at({due:%Y-%m-%dT%H:%M:%S})"
    agent = UserRecord.get(*schema.user_key(world.agent_id))
    assert agent.grace_owed_token is None and agent.gsi1pk is None


def test_an_owed_grace_paid_early_is_still_due_a_grace_period_after_the_departure(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    only = gateway.connect(agent_query(world), token=world.owner_token)
    departed = fake_clock()
    with failing_requests("scheduler", {"CreateSchedule", "UpdateSchedule"}, "ServiceUnavailable"):
        assert gateway.disconnect(only.connection_id)["body"] == "last_out"
    agent = UserRecord.get(*schema.user_key(world.agent_id))
    # Filed under the key the sweeper queries. The index is sparse: DynamoDB refuses
    # an index key that is not a string (moto does not), and the debt would be lost.
    assert (agent.gsi1pk, agent.gsi1sk) == (schema.GRACE_OWED, schema.agent_sort(world.agent_id))

    # Scheduler answers again well within the grace: the sweeper's schedule keeps the
    # departure's due time, so the agent gets its whole grace to come back.
    fake_clock.advance(settings().grace_seconds // 3)
    invoke("sweeper", scheduled_event())
    created = schedule(schedule_name(world.agent_id, None))
    assert created is not None, "the sweeper paid the owed grace"
    due = datetime.fromtimestamp(departed + settings().grace_seconds, tz=UTC)
    assert created["ScheduleExpression"] == f"at({due:%Y-%m-%dT%H:%M:%S})"


def test_an_owed_grace_is_forgotten_when_the_agent_comes_back(world: World) -> None:
    gateway = Gateway()
    only = gateway.connect(agent_query(world), token=world.owner_token)
    with failing_requests("scheduler", {"CreateSchedule", "UpdateSchedule"}, "ServiceUnavailable"):
        gateway.disconnect(only.connection_id)
    gateway.connect(agent_query(world), token=world.owner_token)
    invoke("sweeper", scheduled_event())
    assert schedule(schedule_name(world.agent_id, None)) is None
    assert presence(world).routing_on
