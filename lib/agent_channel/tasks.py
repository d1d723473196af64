"""The task lifecycle and the agent's resource-tracker slots.

Every transition is one conditional write (or one transaction with the slot), so
whichever of a reply and a grace cancellation lands first wins, and the other
changes nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from pynamodb.exceptions import TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from agent_channel import clock
from agent_channel.accounts import next_id
from agent_channel.dynamo_store import transaction
from agent_channel.models import Record, SlotRecord, TaskRecord


class Status(enum.StrEnum):
    QUEUED = "queued"
    PENDING = "pending"
    RUNNING = "running"
    DELEGATED = "delegated"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


class TransitionRefused(Exception):
    """The task is not in the status the transition starts from (someone else won)."""


@dataclass(frozen=True)
class Guard:
    """A condition on another item that a transition's transaction must also meet
    (a ConditionCheck): it lets a transition hold only while what its caller decided
    on (for instance an agent's presence) is unchanged."""

    model: type[Record]
    pk: str
    sk: str
    condition: Condition


def task_key(task_id: int) -> tuple[str, str]:
    return f"TASK#{task_id}", "TASK"


def slot_key(agent_id: int, task_id: int) -> tuple[str, str]:
    return f"SLOTS#{agent_id}", f"TASK#{task_id}"


def status_index_key(agent_id: int, status: str) -> str:
    return f"AGENT#{agent_id}#STATUS#{status}"


def status_index_sort(topic_id: int, task_id: int) -> str:
    # Sorted by topic first, so one topic's tasks are a begins_with away.
    return f"TOPIC#{topic_id:019d}#TASK#{task_id:019d}"


def create_task(
    *,
    topic_id: int,
    agent_id: int,
    content: str,
    author_id: int | None = None,
    comment_id: int | None = None,
    status: Status = Status.QUEUED,
) -> TaskRecord:
    task_id = next_id("task")
    now = clock.now()
    pk, sk = task_key(task_id)
    task = TaskRecord(
        pk,
        sk,
        task_id=task_id,
        topic_id=topic_id,
        agent_id=agent_id,
        status=status.value,
        content=content,
        author_id=author_id,
        comment_id=comment_id,
        created_at=now,
        updated_at=now,
        gsi1pk=status_index_key(agent_id, status.value),
        gsi1sk=status_index_sort(topic_id, task_id),
    )
    task.save(condition=TaskRecord.pk.does_not_exist())
    return task


def get_task(task_id: int) -> TaskRecord | None:
    pk, sk = task_key(task_id)
    try:
        return TaskRecord.get(pk, sk, consistent_read=True)
    except TaskRecord.DoesNotExist:
        return None


def _status_actions(task: TaskRecord, to: Status) -> list[Action]:
    return [
        TaskRecord.status.set(to.value),
        TaskRecord.updated_at.set(clock.now()),
        TaskRecord.gsi1pk.set(status_index_key(int(task.agent_id), to.value)),
    ]


def start(task: TaskRecord) -> TaskRecord:
    """queued or pending -> running, taking a slot of the agent's tracker."""
    return _transition(
        task,
        {Status.QUEUED, Status.PENDING},
        Status.RUNNING,
        take_slot=True,
    )


def delegate(task: TaskRecord, pending_tool_call: str | None = None) -> TaskRecord:
    """running -> delegated: handed to a channel agent, waiting for its reply."""
    extra: list[Action] = (
        [TaskRecord.pending_tool_call.set(pending_tool_call)] if pending_tool_call else []
    )
    return _transition(task, {Status.RUNNING}, Status.DELEGATED, extra_actions=extra)


def claim_reply(task: TaskRecord) -> TaskRecord:
    """delegated -> done, at most once; clears the pending tool call, frees the slot."""
    return _transition(
        task,
        {Status.DELEGATED},
        Status.DONE,
        extra_actions=[TaskRecord.pending_tool_call.remove()],
        free_slot=True,
    )


def cancel_delegated(task: TaskRecord) -> TaskRecord:
    """delegated -> cancelled, at most once; clears the pending tool call, frees the slot."""
    return _transition(
        task,
        {Status.DELEGATED},
        Status.CANCELLED,
        extra_actions=[TaskRecord.pending_tool_call.remove()],
        free_slot=True,
    )


def cancel_delegated_if(task: TaskRecord, guards: Sequence[Guard]) -> TaskRecord:
    """As cancel_delegated, but only while every guard holds, in the same transaction."""
    return _transition(
        task,
        {Status.DELEGATED},
        Status.CANCELLED,
        extra_actions=[TaskRecord.pending_tool_call.remove()],
        free_slot=True,
        guards=guards,
    )


def _transition(
    task: TaskRecord,
    allowed_from: set[Status],
    to: Status,
    *,
    extra_actions: Sequence[Action] = (),
    take_slot: bool = False,
    free_slot: bool = False,
    guards: Sequence[Guard] = (),
) -> TaskRecord:
    """Move a task between statuses with the slot change in the same transaction, so
    a crash can neither free a slot of a task still running nor leak one."""
    agent_id, task_id = int(task.agent_id), int(task.task_id)
    pk, sk = task_key(task_id)
    condition = TaskRecord.status.is_in(*(status.value for status in allowed_from))
    actions = _status_actions(task, to) + list(extra_actions)
    slot_pk, slot_sk = slot_key(agent_id, task_id)
    try:
        with transaction() as writes:
            # The status condition is the whole race guard: a reply and a grace
            # cancellation both start from delegated, and only the first commits.
            writes.update(TaskRecord(pk, sk), actions=actions, condition=condition)
            if take_slot:
                writes.save(
                    SlotRecord(
                        slot_pk,
                        slot_sk,
                        agent_id=agent_id,
                        task_id=task_id,
                        acquired_at=clock.now(),
                    )
                )
            if free_slot:
                # Deleting a slot that is not there is a no-op: release is idempotent.
                writes.delete(SlotRecord(slot_pk, slot_sk))
            for guard in guards:
                writes.condition_check(guard.model, guard.pk, guard.sk, guard.condition)
    except TransactWriteError as error:
        raise TransitionRefused(f"task {task_id} is not {sorted(allowed_from)}") from error
    refreshed = get_task(task_id)
    assert refreshed is not None
    return refreshed


def release_slot(agent_id: int, task_id: int) -> None:
    """Free a slot; idempotent."""
    slot_pk, slot_sk = slot_key(agent_id, task_id)
    SlotRecord(slot_pk, slot_sk).delete()


def held_slots(agent_id: int) -> list[int]:
    return [
        int(record.task_id)
        for record in Record.query(f"SLOTS#{agent_id}", consistent_read=True)
        if isinstance(record, SlotRecord)
    ]


def delegated_tasks(agent_id: int, topic_id: int | None = None) -> list[TaskRecord]:
    """An agent's delegated tasks (one topic's, if given), by index: never a scan.

    The index may lag a write by a moment; callers act through conditional
    transitions, so a task seen in a stale status is simply refused.
    """
    sort_condition = None
    if topic_id is not None:
        sort_condition = Record.gsi1sk.startswith(f"TOPIC#{topic_id:019d}#")
    return [
        record
        for record in Record.gsi1.query(
            status_index_key(agent_id, Status.DELEGATED.value), sort_condition
        )
        if isinstance(record, TaskRecord)
    ]
