"""The task-event pipe (the transactional outbox): task.cancelled events come from
the table's stream through the pipe defined in template.yaml, run here against
moto's DynamoDB stream. A bus outage during a cancel loses nothing."""

from __future__ import annotations

import json

from agent_channel.config import settings
from agent_channel.grace.cancellation import REASON_AGENT_OFFLINE, Outcome
from agent_channel.grace.scheduler import GraceCancellation
from agent_channel.storage.records import Record
from agent_channel.tasks.events import DETAIL_FIELDS, SOURCE, TASK_CANCELLED
from agent_channel_dev.local.pipe import LocalPipe, PipeDefinition
from tests.behaviour.test_grace_cancellation import (
    delegated_task,
    offline_agent,
    run,
    running_task,
    status,
    tasks,
)
from tests.support.clock import FakeClock
from tests.support.event_tap import install_event_tap
from tests.support.faults import failing_requests
from tests.support.fixtures import World


def test_the_pipe_definition_is_read_from_the_template() -> None:
    pipe = PipeDefinition.from_template()
    assert (pipe.source_table, pipe.target_bus) == ("Table", "TaskEventBus")
    assert (pipe.source, pipe.detail_type) == (SOURCE, TASK_CANCELLED)
    assert pipe.starting_position == "TRIM_HORIZON"
    assert pipe.batch_size <= 10  # PutEvents takes at most 10 entries
    assert set(json.loads(pipe.render({}))) == set(DETAIL_FIELDS)


def test_only_a_move_to_cancelled_becomes_an_event(world: World, fake_clock: FakeClock) -> None:
    tap = install_event_tap(settings().event_bus_name)
    cancelled = delegated_task(world.topic_id, world.agent_id)
    busy = running_task(world.topic_id, world.agent_id)
    done = delegated_task(world.topic_id, world.agent_id)
    task = tasks.get(done)
    assert task is not None
    tasks.claim_reply(task)
    token = offline_agent(world, fake_clock)

    result = run(GraceCancellation(world.agent_id, token))

    assert result.outcome is Outcome.CANCELLED
    assert result.cancelled == [cancelled]
    assert status(busy) == "running"
    [event] = tap.drain()
    assert event["source"] == SOURCE
    assert event["detail-type"] == TASK_CANCELLED
    detail = event["detail"]
    assert set(detail) == set(DETAIL_FIELDS)
    assert detail["task_id"] == str(cancelled)
    assert detail["agent_id"] == str(world.agent_id)
    assert detail["topic_id"] == str(world.topic_id)
    assert detail["reason"] == REASON_AGENT_OFFLINE
    assert float(detail["cancelled_at"]) == fake_clock.value
    assert detail["event_id"]
    # The pipe's records of every other write (creates, dispatches, the reply,
    # presence) were read and filtered out: nothing more comes.
    assert tap.drain() == []


def test_a_bus_outage_during_a_cancel_loses_nothing_once_the_bus_returns(
    world: World, fake_clock: FakeClock
) -> None:
    tap = install_event_tap(settings().event_bus_name)
    first = delegated_task(world.topic_id, world.agent_id)
    second = delegated_task(world.topic_id, world.agent_id)
    token = offline_agent(world, fake_clock)

    with failing_requests("events", {"PutEvents"}, "ServiceUnavailable") as failed:
        result = run(GraceCancellation(world.agent_id, token))
        # The cancels committed regardless: the bus is no part of them.
        assert sorted(result.cancelled) == sorted([first, second])
        assert status(first) == status(second) == "cancelled"
        assert tap.drain() == []
        assert tap.drain() == []
    assert failed, "the outage was in effect while the pipe ran"
    assert tap.pipe.failed_batches >= 2

    published = tap.drain()

    assert sorted(int(event["detail"]["task_id"]) for event in published) == sorted([first, second])
    assert tap.drain() == []


def test_a_redelivered_event_carries_the_same_id(world: World, fake_clock: FakeClock) -> None:
    tap = install_event_tap(settings().event_bus_name)
    task_id = delegated_task(world.topic_id, world.agent_id)
    run(GraceCancellation(world.agent_id, offline_agent(world, fake_clock)))
    [delivered] = tap.drain()

    # A restarted pipe begins again at the stream's trim horizon: the same change
    # is delivered again, and a consumer recognises it by its event id.
    restarted = LocalPipe(
        PipeDefinition.from_template(), Record.Meta.table_name, settings().event_bus_name
    )
    assert restarted.pump() == 1
    [again] = tap.drain()

    assert again["detail"] == delivered["detail"]
    assert again["detail"]["event_id"] == delivered["detail"]["event_id"]
    assert again["detail"]["task_id"] == str(task_id)


def test_a_partly_refused_batch_resumes_at_the_first_refused_record(
    world: World, fake_clock: FakeClock
) -> None:
    tap = install_event_tap(settings().event_bus_name)
    ids = [delegated_task(world.topic_id, world.agent_id) for _ in range(3)]
    run(GraceCancellation(world.agent_id, offline_agent(world, fake_clock)))
    real_put = tap.pipe.events.put_events

    accepted: list[object] = []

    def only_one_entry_accepted(**request: object) -> dict[str, object]:
        """The bus takes the very first entry, then refuses every other one."""
        entries = list(request["Entries"])  # type: ignore[call-overload]
        refused = {"ErrorCode": "InternalFailure", "ErrorMessage": "try again"}
        answers: list[object] = []
        for entry in entries:
            if accepted:
                answers.append(refused)
            else:
                accepted.append(entry)
                answers.extend(real_put(Entries=[entry])["Entries"])
        return {"FailedEntryCount": len(entries) - len(accepted), "Entries": answers}

    tap.pipe.events.put_events = only_one_entry_accepted  # type: ignore[method-assign]
    first_round = tap.drain()
    tap.pipe.events.put_events = real_put  # type: ignore[method-assign]
    second_round = tap.drain()

    delivered = [int(event["detail"]["task_id"]) for event in first_round + second_round]
    assert len(first_round) == 1
    assert sorted(delivered) == sorted(ids)
