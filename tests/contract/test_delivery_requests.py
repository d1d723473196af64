"""What the reliable agent stream costs in DynamoDB requests, counted at botocore:
at most one write per message, one Query per resume, one conditional write per
acknowledgement, and a 410 in the connect window only reads."""

from __future__ import annotations

from agent_channel.config import settings
from agent_channel.delivery import history
from agent_channel.delivery.gone import forget_gone
from agent_channel.lambda_kit import wiring
from agent_channel.tasks.dynamodb import DynamoTaskStore
from agent_channel_dev.instruments.request_counter import counting_requests
from tests.support import management_server
from tests.support.fixtures import World
from tests.support.gateway import Gateway, invoke
from tests.support.management_server import ManagementApi, connect_agent

aws = management_server.aws
management = management_server.management
MESSAGE = {"type": "permission_decision", "request_id": "r", "behavior": "allow"}


def test_each_message_costs_one_query_and_one_conditional_put(world: World) -> None:
    with counting_requests() as counter:
        history.stamp(wiring.history(), world.agent_id, MESSAGE)
    assert counter.of("dynamodb") == ["Query", "PutItem"]


def test_resume_is_one_query_plus_the_posts_and_ack_one_conditional_write(
    world: World, management: ManagementApi
) -> None:
    gateway = Gateway()
    socket = connect_agent(gateway, management.sink, world, "a=")
    for _ in range(3):
        history.stamp(wiring.history(), world.agent_id, MESSAGE)
    head = wiring.history().head(world.agent_id)
    assert head is not None
    seen = len(management.sink.messages(socket))
    with counting_requests() as counter:
        gateway.send(socket, {"action": "resume", "after": 1, "epoch": head.epoch})
    assert counter.of("dynamodb") == ["Query"]
    # The posts, counted where they land: seq 2, seq 3, resumed.
    assert len(management.sink.messages(socket)) - seen == 3

    tasks = DynamoTaskStore()
    task = tasks.start(tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="x"))
    assert invoke("backend", {"op": "dispatch", "task_id": task.task_id})["ok"]
    with counting_requests() as counter:
        gateway.send(socket, {"action": "ack", "task_id": task.task_id, "generation": 1})
    assert counter.of("dynamodb") == ["UpdateItem"]


def test_a_410_in_the_connect_window_reads_once_and_writes_nothing(
    world: World, management: ManagementApi
) -> None:
    socket = connect_agent(Gateway(), management.sink, world, "a=")
    with counting_requests() as counter:
        forget_gone(
            wiring.presence_store(),
            wiring.grace_scheduler(),
            settings(),
            socket,
            f"agent:user:{world.agent_id}",
        )
    assert counter.of("dynamodb") == ["GetItem"]
