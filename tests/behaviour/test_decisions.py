"""Recording a permission decision: allow or deny only, first wins, owner only,
stamped, pushed to the agent's stream, kept while no socket is open."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent_channel.config import CHANNEL_AGENT_MODEL
from agent_channel.delivery import decisions
from agent_channel.delivery.decision_store import AlreadyDecided, NotOwner
from agent_channel.delivery.decisions import (
    MAX_REASON_LENGTH,
    InvalidDecision,
    decide,
    decision_message,
    record_decision,
)
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.storage import schema
from agent_channel.storage.records import DecisionRecord, Record
from tests.support import management_server
from tests.support.clock import FakeClock
from tests.support.fixtures import World
from tests.support.gateway import Gateway
from tests.support.interleave import explore, run_once
from tests.support.management_server import (
    ManagementApi,
    connect_agent,
    connect_topic,
)

# The shared ``aws`` fixture, overridden so that local URLs pass through moto, and
# the running @connections server.
aws = management_server.aws
management = management_server.management


def stored(agent_id: int, request_id: str) -> DecisionRecord | None:
    pk, sk = schema.decision_key(agent_id, request_id)
    try:
        return DecisionRecord.get(pk, sk, consistent_read=True)
    except DecisionRecord.DoesNotExist:
        return None


def decision_items() -> list[Record]:
    return [record for record in Record.scan() if isinstance(record, DecisionRecord)]


def test_decision_is_stamped_and_pushed_to_every_session_of_the_agent(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    gateway, sink = Gateway(), management.sink
    first = connect_agent(gateway, sink, world, "a1=", session_id="s1")
    second = connect_agent(gateway, sink, world, "a2=", session_id="s2")
    watcher = connect_topic(gateway, sink, world, "t1=")

    decided = decide(
        wiring.decision_store(),
        agent_id=world.agent_id,
        request_id="r1",
        behavior="allow",
        decided_by=world.owner_id,
        client=management.client,
        on_gone=wiring.gone_handler(),
    )

    expected = {
        "type": "permission_decision",
        "request_id": "r1",
        "behavior": "allow",
        "agent_id": world.agent_id,
        "decided_by": world.owner_id,
    }
    assert sink.json_messages(first) == [expected]
    assert sink.json_messages(second) == [expected]
    assert sink.messages(watcher) == []
    assert sorted(decided.broadcast.delivered) == [first, second]
    record = stored(world.agent_id, "r1")
    assert record is not None
    assert record.decided_at == fake_clock.value
    assert record.decided_by == world.owner_id


def test_first_decision_wins(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    decide(
        wiring.decision_store(),
        agent_id=world.agent_id,
        request_id="r1",
        behavior="deny",
        decided_by=world.owner_id,
        client=management.client,
        on_gone=wiring.gone_handler(),
    )

    with pytest.raises(AlreadyDecided, match="already decided"):
        decide(
            wiring.decision_store(),
            agent_id=world.agent_id,
            request_id="r1",
            behavior="allow",
            decided_by=world.owner_id,
            client=management.client,
            on_gone=wiring.gone_handler(),
        )

    record = stored(world.agent_id, "r1")
    assert record is not None
    assert record.behavior == "deny"
    assert [m["behavior"] for m in sink.json_messages(socket)] == ["deny"]


def test_concurrent_decisions_commit_exactly_one_in_every_interleaving(world: World) -> None:
    counter = iter(range(1_000_000))

    def run_one(choose: object) -> None:
        request_id = f"race-{next(counter)}"

        def deciding(behavior: str) -> Callable[[], str]:
            def act() -> str:
                try:
                    decisions.record_decision(
                        wiring.decision_store(),
                        agent_id=world.agent_id,
                        request_id=request_id,
                        behavior=behavior,
                        decided_by=world.owner_id,
                    )
                except AlreadyDecided:
                    return "refused"
                return "won"

            return act

        run = run_once(
            [("allow", deciding("allow")), ("deny", deciding("deny"))],
            choose,  # type: ignore[arg-type]
        )
        assert sorted(run.results.values()) == ["refused", "won"], run.trace
        winner = next(name for name, outcome in run.results.items() if outcome == "won")
        record = stored(world.agent_id, request_id)
        assert record is not None
        assert record.behavior == winner

    assert explore(run_one) == 2


@pytest.mark.parametrize("behavior", ["maybe", "ALLOW", "", "allow "])
def test_only_allow_or_deny_is_recorded(world: World, behavior: str) -> None:
    with pytest.raises(InvalidDecision):
        decisions.record_decision(
            wiring.decision_store(),
            agent_id=world.agent_id,
            request_id="r1",
            behavior=behavior,
            decided_by=world.owner_id,
        )
    assert decision_items() == []


@pytest.mark.parametrize("request_id", ["", "   ", "x" * 257])
def test_blank_or_oversized_request_ids_are_refused(world: World, request_id: str) -> None:
    with pytest.raises(InvalidDecision):
        decisions.record_decision(
            wiring.decision_store(),
            agent_id=world.agent_id,
            request_id=request_id,
            behavior="allow",
            decided_by=world.owner_id,
        )
    assert decision_items() == []


def test_one_user_never_reaches_another_users_decisions(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")

    with pytest.raises(NotOwner):
        decide(
            wiring.decision_store(),
            agent_id=world.agent_id,
            request_id="r1",
            behavior="allow",
            decided_by=world.stranger_id,
            client=management.client,
            on_gone=wiring.gone_handler(),
        )
    # A missing agent gets the very same answer: nothing to learn from it.
    with pytest.raises(NotOwner):
        decisions.record_decision(
            wiring.decision_store(),
            agent_id=999_999,
            request_id="r1",
            behavior="allow",
            decided_by=world.stranger_id,
        )
    assert decision_items() == []
    assert sink.messages(socket) == []
    # The owner can still decide: the stranger's attempt took nothing.
    decide(
        wiring.decision_store(),
        agent_id=world.agent_id,
        request_id="r1",
        behavior="allow",
        decided_by=world.owner_id,
        client=management.client,
        on_gone=wiring.gone_handler(),
    )
    assert len(sink.messages(socket)) == 1


def test_stranger_refused_even_after_the_owner_decided(world: World) -> None:
    decisions.record_decision(
        wiring.decision_store(),
        agent_id=world.agent_id,
        request_id="r1",
        behavior="allow",
        decided_by=world.owner_id,
    )
    # Ownership is reported before "already decided": a stranger learns nothing.
    with pytest.raises(NotOwner):
        decisions.record_decision(
            wiring.decision_store(),
            agent_id=world.agent_id,
            request_id="r1",
            behavior="deny",
            decided_by=world.stranger_id,
        )


def test_decisions_are_keyed_per_agent(world: World) -> None:
    other = accounts.create_agent("second", world.owner_id, CHANNEL_AGENT_MODEL)
    decisions.record_decision(
        wiring.decision_store(),
        agent_id=world.agent_id,
        request_id="r1",
        behavior="allow",
        decided_by=world.owner_id,
    )
    # The same request id under another agent is another decision.
    decisions.record_decision(
        wiring.decision_store(),
        agent_id=int(other.user_id),
        request_id="r1",
        behavior="deny",
        decided_by=world.owner_id,
    )
    first, second = stored(world.agent_id, "r1"), stored(int(other.user_id), "r1")
    assert first is not None
    assert first.behavior == "allow"
    assert second is not None
    assert second.behavior == "deny"


def test_decision_with_no_socket_open_is_kept(world: World, management: ManagementApi) -> None:
    decided = decide(
        wiring.decision_store(),
        agent_id=world.agent_id,
        request_id="r1",
        behavior="allow",
        decided_by=world.owner_id,
        client=management.client,
        on_gone=wiring.gone_handler(),
    )
    assert decided.broadcast.delivered == ()
    record = stored(world.agent_id, "r1")
    assert record is not None
    assert record.behavior == "allow"
    # No TTL: it waits for the next replay however long that takes.
    assert record.expires_at is None


def test_decision_is_kept_when_the_management_api_is_unreachable(
    world: World, management: ManagementApi
) -> None:
    from agent_channel_dev.local.connections_api import memory_connections_api

    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    with memory_connections_api(stage="gone") as (_, server):
        dead_endpoint = server.endpoint_url("gone")
    unreachable = wiring.management_api(dead_endpoint)  # nothing listens there now

    decided = decide(
        wiring.decision_store(),
        agent_id=world.agent_id,
        request_id="r1",
        behavior="allow",
        decided_by=world.owner_id,
        client=unreachable,
        on_gone=wiring.gone_handler(),
    )

    assert decided.broadcast.failed == (socket,)
    assert decided.broadcast.gone == ()
    assert stored(world.agent_id, "r1") is not None


def test_reason_and_decider_are_stored_and_pushed(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=", session_id="s1")

    decide(
        wiring.decision_store(),
        agent_id=world.agent_id,
        request_id="r-why",
        behavior="deny",
        decided_by=world.owner_id,
        reason="not on the production database",
        client=management.client,
        on_gone=wiring.gone_handler(),
    )

    [pushed] = sink.json_messages(socket)
    assert pushed["decided_by"] == world.owner_id
    assert pushed["reason"] == "not on the production database"
    record = stored(world.agent_id, "r-why")
    assert record is not None
    assert record.reason == "not on the production database"
    assert record.decided_by == world.owner_id


@pytest.mark.parametrize("reason", ["", "   "])
def test_a_blank_reason_is_no_reason(world: World, reason: str) -> None:
    record = record_decision(
        wiring.decision_store(),
        agent_id=world.agent_id,
        request_id="r-blank",
        behavior="allow",
        decided_by=world.owner_id,
        reason=reason,
    )
    assert record.reason is None
    assert "reason" not in decision_message(record)


def test_an_oversized_reason_is_refused_and_nothing_is_stored(world: World) -> None:
    with pytest.raises(InvalidDecision, match="reason"):
        record_decision(
            wiring.decision_store(),
            agent_id=world.agent_id,
            request_id="r-long",
            behavior="allow",
            decided_by=world.owner_id,
            reason="x" * (MAX_REASON_LENGTH + 1),
        )
    assert decision_items() == []
