"""What one connected session costs the real code, counted at botocore against
moto: ten steady minutes of a channel agent's session at the advertised heartbeat,
with the sweeper running every minute (docs/SCALE.md section 6). Heartbeats go
through template.yaml's DynamoDB integration (no Lambda); every tenth beat the
reference client sends a restore (the Lambda route) instead."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agent_channel.config import settings
from agent_channel.lambda_kit import wiring
from agent_channel.storage import schema
from agent_channel_dev.client import ClientConfig
from agent_channel_dev.instruments.request_counter import counting_requests
from agent_channel_dev.local.apigw_events import scheduled_event
from tests.support import gateway as shim
from tests.support.clock import FakeClock
from tests.support.fixtures import World
from tests.support.gateway import Gateway, invoke

MINUTES = 10


@dataclass(frozen=True)
class Bill:
    frames: int
    """Heartbeat and restore frames the client sent (API Gateway messages)."""
    invocations: int
    """Lambda invocations those frames caused."""
    writes: int
    """DynamoDB write requests, the sweeps' included."""


def steady_session(
    world: World,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    heartbeat: int,
    restore_every: int,
) -> Bill:
    gateway = Gateway()
    query = {"agent_id": str(world.agent_id), "session_id": "s1"}
    connection = gateway.connect(query, token=world.owner_token).connection_id
    invoked: list[str] = []
    real_invoke = shim.invoke

    def counted(name: str, event: object) -> object:
        invoked.append(name)
        return real_invoke(name, event)

    monkeypatch.setattr(shim, "invoke", counted)
    frames = 0
    with counting_requests() as counter:
        for second in range(1, MINUTES * 60 + 1):
            clock.advance(1)
            if second % heartbeat == 0:
                frames += 1
                due = restore_every and frames % restore_every == 0
                gateway.send(connection, {"action": "restore" if due else "heartbeat"})
            if second % 60 == 0:
                invoke("sweeper", scheduled_event())
                presence = wiring.presence_store().read(world.agent_id)
                assert presence is not None and presence.routing_on, "never stale while beating"
    monkeypatch.setattr(shim, "invoke", real_invoke)
    writes = counter.by_operation("dynamodb")
    total = writes["UpdateItem"] + writes["DeleteItem"] + writes["TransactWriteItems"]
    return Bill(frames, len(invoked), total)


def test_heartbeats_run_no_lambda_and_write_once_each(
    world: World, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One index shard: the sweeper's 256 index Queries a minute are not what this
    # counts, and moto would spend most of the test on them.
    monkeypatch.setattr(schema, "ROUTED_SHARDS", 1)
    every = settings().heartbeat_seconds
    assert every == 30 and every < settings().stale_after_seconds
    bill = steady_session(world, fake_clock, monkeypatch, every, restore_every=0)
    assert bill.frames == MINUTES * 60 // every
    assert bill.invocations == 0, "a heartbeat is API Gateway's own UpdateItem"
    assert bill.writes == bill.frames, "one write per heartbeat, none from the sweeps"


def test_the_clients_safety_net_is_one_lambda_in_ten_beats_and_no_extra_write(
    world: World, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "ROUTED_SHARDS", 1)
    restore_every = ClientConfig(url="", token="", agent_id=0).restore_every
    assert restore_every == 10
    every = settings().heartbeat_seconds
    now = steady_session(world, fake_clock, monkeypatch, every, restore_every)
    assert now.invocations == now.frames // restore_every
    assert now.writes == now.frames, "a restore of a live lease is one UpdateItem too"
    # Against a 15 s heartbeat: half the frames, half the writes.
    before = steady_session(world, fake_clock, monkeypatch, 15, restore_every)
    assert now.frames / before.frames == pytest.approx(0.5, abs=0.01)
    assert now.writes / before.writes <= 0.51
