from tests.support.fixtures import World
from tests.support.gateway import Gateway


def test_channel_agent_connects_and_disconnects(world: World) -> None:
    from agent_channel.lambda_kit import wiring

    gateway = Gateway()
    result = gateway.connect(
        {"agent_id": str(world.agent_id), "session_id": "s1"}, token=world.owner_token
    )
    assert result.status == 200
    presence = wiring.presence_store().read(world.agent_id)
    assert presence is not None and presence.routing_on and len(presence.leases) == 1
    gateway.send(result.connection_id, {"action": "heartbeat"})
    gateway.disconnect(result.connection_id)
    presence = wiring.presence_store().read(world.agent_id)
    assert presence is not None and not presence.routing_on and not presence.leases
