"""What one connected session costs the real code, counted at botocore against
moto: ten steady minutes of a channel agent's session at the advertised heartbeat,
with the sweeper running every minute (docs/SCALE.md)."""

from __future__ import annotations

import pytest

from agent_channel.config import settings
from agent_channel.lambda_kit import wiring
from agent_channel.storage import schema
from agent_channel_dev.instruments.request_counter import counting_requests
from agent_channel_dev.local.apigw_events import scheduled_event
from tests.support.clock import FakeClock
from tests.support.fixtures import World
from tests.support.gateway import Gateway, invoke

MINUTES = 10


def steady_session(world: World, clock: FakeClock, heartbeat: int) -> tuple[int, int]:
    """(heartbeat invocations, DynamoDB writes) of one session over MINUTES."""
    gateway = Gateway()
    query = {"agent_id": str(world.agent_id), "session_id": "s1"}
    connection = gateway.connect(query, token=world.owner_token).connection_id
    invocations = 0
    with counting_requests() as counter:
        for second in range(1, MINUTES * 60 + 1):
            clock.advance(1)
            if second % heartbeat == 0:
                gateway.send(connection, {"action": "heartbeat"})
                invocations += 1
            if second % 60 == 0:
                invoke("sweeper", scheduled_event())
                presence = wiring.presence_store().read(world.agent_id)
                assert presence is not None and presence.routing_on, "never stale while beating"
    writes = counter.by_operation("dynamodb")
    return invocations, writes["UpdateItem"] + writes["DeleteItem"] + writes["TransactWriteItems"]


@pytest.mark.parametrize("heartbeat", [15])
def test_the_advertised_heartbeat_halves_the_requests_of_a_session(
    world: World, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch, heartbeat: int
) -> None:
    # One index shard: the sweeper's 256 index Queries a minute are not what this
    # counts, and moto would spend most of the test on them.
    monkeypatch.setattr(schema, "ROUTED_SHARDS", 1)
    now_every = settings().heartbeat_seconds
    assert now_every == 30 and now_every < settings().stale_after_seconds
    now_calls, now_writes = steady_session(world, fake_clock, now_every)
    before_calls, before_writes = steady_session(world, fake_clock, heartbeat)
    assert now_calls == MINUTES * 60 // now_every
    assert now_writes == now_calls, "one write per heartbeat, none from the sweeps"
    assert now_calls / before_calls == pytest.approx(0.5, abs=0.01)
    assert now_writes / before_writes <= 0.51
