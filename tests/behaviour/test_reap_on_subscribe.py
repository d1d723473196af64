"""A subscribe reaps the stale leases of crashed siblings, so a dead process's row
never passes for a session, and costs nothing extra when the agent had no sibling."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from agent_channel.config import settings
from agent_channel.grace.scheduler import schedule_name
from agent_channel.lambda_kit import wiring
from agent_channel.presence import rules
from agent_channel.presence.model import Subscription
from agent_channel.storage import schema
from agent_channel.storage.records import LeaseRecord
from tests.support.clock import FakeClock
from tests.support.fixtures import World
from tests.support.gateway import Gateway

STALE_AFTER = settings().stale_after_seconds


def connect(gateway: Gateway, world: World, session: str, connection_id: str) -> None:
    query = {"agent_id": str(world.agent_id), "session_id": session}
    result = gateway.connect(query, token=world.owner_token, connection_id=connection_id)
    assert result.status == 200


def crash(world: World, connection_id: str, clock: FakeClock) -> None:
    """The plugin behind this socket died without a $disconnect, long ago."""
    lease = LeaseRecord(*schema.lease_key(world.agent_id, connection_id))
    lease.update(actions=[LeaseRecord.last_seen_at.set(clock() - STALE_AFTER - 1)])


def leases(world: World) -> dict[str, str]:
    found = wiring.presence_store().read(world.agent_id)
    assert found is not None
    return {lease.connection_id: lease.session_id for lease in found.leases}


def schedule(agent_id: int, session_id: str | None) -> dict[str, Any] | None:
    client = boto3.client("scheduler")
    try:
        return client.get_schedule(
            Name=schedule_name(agent_id, session_id), GroupName=settings().schedule_group
        )
    except client.exceptions.ResourceNotFoundException:
        return None


def test_a_new_session_reaps_a_crashed_siblings_lease(world: World, fake_clock: FakeClock) -> None:
    gateway = Gateway()
    connect(gateway, world, "s1", "c1=")
    crash(world, "c1=", fake_clock)

    connect(gateway, world, "s2", "c2=")

    assert leases(world) == {"c2=": "s2"}, "the crashed sibling's row is gone at once"
    # s1 lost its only lease while a sibling stays: its own topics get the
    # session-scoped grace, as when the sweeper reaps it.
    assert schedule(world.agent_id, "s1") is not None
    assert schedule(world.agent_id, None) is None


def test_a_restarted_session_reaps_its_own_old_lease_and_schedules_nothing(
    world: World, fake_clock: FakeClock
) -> None:
    gateway = Gateway()
    connect(gateway, world, "s1", "old=")
    crash(world, "old=", fake_clock)

    connect(gateway, world, "s1", "new=")

    assert leases(world) == {"new=": "s1"}
    assert schedule(world.agent_id, "s1") is None, "the session is back: no grace for it"


def test_live_siblings_are_kept(world: World, fake_clock: FakeClock) -> None:
    gateway = Gateway()
    connect(gateway, world, "s1", "c1=")
    fake_clock.advance(STALE_AFTER - 1)  # old, but not stale

    connect(gateway, world, "s2", "c2=")

    assert leases(world) == {"c1=": "s1", "c2=": "s2"}
    assert schedule(world.agent_id, "s1") is None


def test_a_lease_refreshed_after_the_read_is_not_reaped(
    world: World, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sibling's heartbeat landing between the reap's read and its delete wins."""
    gateway = Gateway()
    connect(gateway, world, "s1", "c1=")
    crash(world, "c1=", fake_clock)
    store = wiring.presence_store()
    real_reap = store.reap

    def heartbeat_first(stale: Any, cutoff: float) -> Any:
        assert store.touch(world.agent_id, "c1=", fake_clock())
        return real_reap(stale, cutoff)

    monkeypatch.setattr(store, "reap", heartbeat_first)
    subscription = Subscription("c2=", world.owner_id, world.agent_id, "s2")
    rules.subscribe(store, wiring.grace_scheduler(), subscription)

    reaped = rules.reap_on_subscribe(store, wiring.grace_scheduler(), settings(), subscription)

    assert reaped == []
    assert leases(world) == {"c1=": "s1", "c2=": "s2"}
    assert schedule(world.agent_id, "s1") is None


def test_a_failed_reap_does_not_fail_the_connect(
    world: World, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = Gateway()
    connect(gateway, world, "s1", "c1=")
    crash(world, "c1=", fake_clock)

    def broken(*_: Any) -> Any:
        raise RuntimeError("storage unavailable")

    monkeypatch.setattr(wiring.presence_store(), "reap", broken)
    connect(gateway, world, "s2", "c2=")

    # The subscribe committed; the crashed lease waits for the sweeper.
    assert leases(world) == {"c1=": "s1", "c2=": "s2"}
