"""Dispatch (running -> delegated, to both streams, only when routable) and the
reply claim (delegated -> done, at most once)."""

from __future__ import annotations

import pytest

from agent_channel.delivery.dispatch import (
    AgentNotRoutable,
    InvalidComment,
    InvalidTransition,
    ReplyDuplicate,
    ReplyNotDelegated,
    TaskNotFound,
    claim_reply,
    dispatch,
    iso8601,
)
from agent_channel.delivery.fanout import PayloadTooLarge
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.storage.records import TaskRecord
from agent_channel.tasks.dynamodb import DynamoTaskStore
from agent_channel.tasks.model import DeliveryPlan
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

tasks = DynamoTaskStore()

# The shared ``aws`` fixture, overridden so that local URLs pass through moto, and
# the running @connections server.
aws = management_server.aws
management = management_server.management


def running_task(world: World, topic_id: int | None = None, content: str = "do it") -> TaskRecord:
    task = tasks.create(
        topic_id=topic_id or world.topic_id,
        agent_id=world.agent_id,
        content=content,
        author_id=world.owner_id,
        comment_id=77,
    )
    return tasks.start(task)


def status(task_id: int) -> str:
    task = tasks.get(task_id)
    assert task is not None
    return task.status


def test_dispatch_delegates_and_tells_both_streams(
    world: World, management: ManagementApi, fake_clock: FakeClock
) -> None:
    gateway, sink = Gateway(), management.sink
    agent_socket = connect_agent(gateway, sink, world, "a1=")
    watcher = connect_topic(gateway, sink, world, "t1=")
    task = running_task(world)

    done = dispatch(
        tasks,
        int(task.task_id),
        pending_tool_call="tool-1",
        client=management.client,
        on_gone=wiring.gone_handler(),
    )

    expected = {
        "type": "dispatch",
        "agent_id": world.agent_id,
        "task_id": int(task.task_id),
        "generation": 1,
        "session_topic": None,
        "comment": {
            "id": 77,
            "content": "do it",
            "author_id": world.owner_id,
            "author_name": "ada",
            "topic_id": world.topic_id,
            "creative_id": None,
            "created_at": iso8601(fake_clock.value),
        },
    }
    assert sink.json_messages(agent_socket) == [expected]
    assert sink.json_messages(watcher) == [expected]
    assert done.to_agent.delivered == (agent_socket,)
    assert done.to_topic.delivered == (watcher,)
    stored = tasks.get(int(task.task_id))
    assert stored is not None
    assert stored.status == "delegated"
    assert stored.pending_tool_call == "tool-1"


def test_session_topic_names_its_session(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=", session_id="sess-9")
    topic = accounts.create_topic(
        world.owner_id, "private", primary_agent_id=world.agent_id, session_id="sess-9"
    )
    task = running_task(world, topic_id=int(topic.topic_id))

    dispatch(tasks, int(task.task_id), client=management.client, on_gone=wiring.gone_handler())

    [message] = sink.json_messages(socket)
    assert message["session_topic"] == "sess-9"
    assert message["comment"]["topic_id"] == int(topic.topic_id)


def test_backend_comment_fields_override_the_tasks(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    task = running_task(world)

    dispatch(
        tasks,
        int(task.task_id),
        comment_fields={"content": "edited", "creative_id": 5, "author_name": "Ada L."},
        client=management.client,
        on_gone=wiring.gone_handler(),
    )

    [message] = sink.json_messages(socket)
    assert message["comment"]["content"] == "edited"
    assert message["comment"]["creative_id"] == 5
    assert message["comment"]["author_name"] == "Ada L."
    assert message["comment"]["id"] == 77


def test_comment_of_another_topic_is_refused_and_the_task_stays_running(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    connect_agent(gateway, sink, world, "a1=")
    task = running_task(world)
    with pytest.raises(InvalidComment):
        dispatch(
            tasks,
            int(task.task_id),
            comment_fields={"topic_id": 999},
            client=management.client,
            on_gone=wiring.gone_handler(),
        )
    with pytest.raises(InvalidComment):
        dispatch(
            tasks,
            int(task.task_id),
            comment_fields={"color": "red"},
            client=management.client,
            on_gone=wiring.gone_handler(),
        )
    assert status(int(task.task_id)) == "running"


def test_unroutable_agent_is_refused_before_the_transition(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    watcher = connect_topic(gateway, sink, world, "t1=")
    task = running_task(world)

    with pytest.raises(AgentNotRoutable, match="not routable"):
        dispatch(tasks, int(task.task_id), client=management.client, on_gone=wiring.gone_handler())

    assert status(int(task.task_id)) == "running"
    assert sink.messages(watcher) == []


def test_agent_that_left_is_no_longer_routable(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    gateway.disconnect(socket)
    task = running_task(world)

    with pytest.raises(AgentNotRoutable):
        dispatch(tasks, int(task.task_id), client=management.client, on_gone=wiring.gone_handler())
    assert status(int(task.task_id)) == "running"


def test_only_a_running_task_is_dispatched(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    queued = tasks.create(topic_id=world.topic_id, agent_id=world.agent_id, content="x")

    with pytest.raises(InvalidTransition):
        dispatch(
            tasks, int(queued.task_id), client=management.client, on_gone=wiring.gone_handler()
        )
    with pytest.raises(TaskNotFound):
        dispatch(tasks, 424242, client=management.client, on_gone=wiring.gone_handler())

    assert status(int(queued.task_id)) == "queued"
    assert sink.messages(socket) == []


def test_dispatching_twice_sends_once(world: World, management: ManagementApi) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    task = running_task(world)
    dispatch(tasks, int(task.task_id), client=management.client, on_gone=wiring.gone_handler())
    with pytest.raises(InvalidTransition):
        dispatch(tasks, int(task.task_id), client=management.client, on_gone=wiring.gone_handler())
    assert len(sink.messages(socket)) == 1


def test_oversized_dispatch_is_refused_and_the_task_stays_running(
    world: World, management: ManagementApi
) -> None:
    gateway, sink = Gateway(), management.sink
    socket = connect_agent(gateway, sink, world, "a1=")
    task = running_task(world, content="x" * (130 * 1024))

    with pytest.raises(PayloadTooLarge):
        dispatch(tasks, int(task.task_id), client=management.client, on_gone=wiring.gone_handler())

    assert status(int(task.task_id)) == "running"
    assert sink.messages(socket) == []


# A reply may name the generation it answers; the status condition must still hold
# then (the generation fence is added to it, never put in its place).
NAMED_GENERATION = pytest.mark.parametrize(
    "generation", [None, 1], ids=["no_generation", "naming_its_generation"]
)


@NAMED_GENERATION
def test_reply_claimed_twice_completes_once(
    world: World, management: ManagementApi, generation: int | None
) -> None:
    gateway, sink = Gateway(), management.sink
    connect_agent(gateway, sink, world, "a1=")
    task = running_task(world)
    dispatch(
        tasks,
        int(task.task_id),
        pending_tool_call="tool-1",
        client=management.client,
        on_gone=wiring.gone_handler(),
    )
    assert tasks.held_slots(world.agent_id) == [int(task.task_id)]

    done = claim_reply(tasks, int(task.task_id), agent_id=world.agent_id, generation=generation)
    assert done.status == "done"
    assert done.pending_tool_call is None
    assert tasks.held_slots(world.agent_id) == []

    with pytest.raises(ReplyDuplicate) as refused:
        claim_reply(tasks, int(task.task_id), generation=generation)
    assert refused.value.code == "reply_duplicate"
    assert refused.value.details == {"task_id": int(task.task_id), "status": "done"}
    assert status(int(task.task_id)) == "done"


@NAMED_GENERATION
def test_reply_after_a_grace_cancellation_is_refused(world: World, generation: int | None) -> None:
    task = running_task(world)
    delegated = tasks.delegate(task, delivery=DeliveryPlan(1, "{}", next_delivery_at=0.0))
    tasks.cancel_delegated(delegated)
    with pytest.raises(ReplyNotDelegated) as refused:
        claim_reply(tasks, int(task.task_id), generation=generation)
    assert refused.value.code == "reply_not_delegated"
    assert refused.value.details == {"task_id": int(task.task_id), "status": "cancelled"}
    assert status(int(task.task_id)) == "cancelled"


def test_reply_to_a_task_never_handed_over_is_not_delegated(world: World) -> None:
    task = running_task(world)
    with pytest.raises(ReplyNotDelegated) as refused:
        claim_reply(tasks, int(task.task_id))
    assert refused.value.details["status"] == "running"
    assert status(int(task.task_id)) == "running"


def test_reply_from_another_agent_is_refused(world: World) -> None:
    task = running_task(world)
    tasks.delegate(task)
    with pytest.raises(TaskNotFound):
        claim_reply(tasks, int(task.task_id), agent_id=world.other_ai_id)
    assert status(int(task.task_id)) == "delegated"


def test_concurrent_claims_complete_once_in_every_interleaving(world: World) -> None:
    def run_one(choose: object) -> None:
        task = tasks.delegate(running_task(world))
        task_id = int(task.task_id)

        def claiming() -> str:
            try:
                claim_reply(tasks, task_id)
            except ReplyDuplicate:
                # The loser of two copies of one reply is told it was a duplicate.
                return "refused"
            return "claimed"

        run = run_once([("one", claiming), ("two", claiming)], choose)  # type: ignore[arg-type]
        assert sorted(run.results.values()) == ["claimed", "refused"], run.trace
        assert status(task_id) == "done"

    assert explore(run_one) > 1
