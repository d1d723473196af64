"""The writes of acknowledgement and redelivery on DynamoDB: each one conditional
UpdateItem of the task, so it holds only while the task is still the delegated
dispatch it was decided on."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from pynamodb.exceptions import UpdateError

from agent_channel.storage import schema
from agent_channel.storage.records import TaskRecord
from agent_channel.storage.transactions import condition_failed
from agent_channel.tasks.model import Status, Task

if TYPE_CHECKING:
    from pynamodb.expressions.condition import Condition


class AckOutcome(enum.StrEnum):
    ACKED = "acked"
    NOT_FOUND = "task_not_found"
    NOT_DELEGATED = "not_delegated"
    STALE_GENERATION = "stale_generation"


def _unacknowledged(task: Task) -> Condition:
    """Still the delegated dispatch ``task`` was read as, and still unacknowledged."""
    condition: Condition = (
        (TaskRecord.status == Status.DELEGATED.value)
        & (TaskRecord.generation == task.generation)
        & (TaskRecord.delivery_attempts == task.delivery_attempts)
        & (
            TaskRecord.acked_generation.does_not_exist()
            | (TaskRecord.acked_generation != task.generation)
        )
    )
    return condition


class DynamoDeliveryBook:
    def acknowledge(self, agent_id: int, task_id: int, generation: int, now: float) -> AckOutcome:
        try:
            TaskRecord(*schema.task_key(task_id)).update(
                actions=[
                    TaskRecord.acked_generation.set(generation),
                    TaskRecord.acked_at.set(now),
                ],
                # The task must be this agent's (a foreign or made-up id changes
                # nothing), still delegated (a claim or a grace cancellation may
                # have won), and of this generation (an ack of an older dispatch
                # says nothing about the newer one). Acking twice is harmless.
                condition=(TaskRecord.agent_id == agent_id)
                & (TaskRecord.status == Status.DELEGATED.value)
                & (TaskRecord.generation == generation),
            )
        except UpdateError as error:
            if condition_failed(error):
                return self._why_not(agent_id, task_id)
            raise
        return AckOutcome.ACKED

    def _why_not(self, agent_id: int, task_id: int) -> AckOutcome:
        # Only on a refused ack: one read to say why.
        try:
            record = TaskRecord.get(*schema.task_key(task_id), consistent_read=True)
        except TaskRecord.DoesNotExist:
            return AckOutcome.NOT_FOUND
        if int(record.agent_id) != agent_id:
            # The same answer as a task that does not exist: nothing is learnt
            # about another agent's work.
            return AckOutcome.NOT_FOUND
        if record.status != Status.DELEGATED.value:
            return AckOutcome.NOT_DELEGATED
        return AckOutcome.STALE_GENERATION

    def take_attempt(self, task: Task, next_delivery_at: float) -> bool:
        """Count one more delivery of ``task``'s dispatch; False if it was acknowledged,
        claimed, cancelled, re-dispatched or redelivered by someone else meanwhile."""
        try:
            TaskRecord(*schema.task_key(task.task_id)).update(
                actions=[
                    TaskRecord.delivery_attempts.set(task.delivery_attempts + 1),
                    TaskRecord.next_delivery_at.set(next_delivery_at),
                ],
                # Race: an ack, a claim, a grace cancellation or a second sweeper
                # may land between the read and this write; then nothing is sent.
                condition=_unacknowledged(task),
            )
        except UpdateError as error:
            if condition_failed(error):
                return False
            raise
        return True

    def give_up(self, task: Task) -> bool:
        """Stop redelivering ``task``'s dispatch; False if it changed meanwhile."""
        try:
            TaskRecord(*schema.task_key(task.task_id)).update(
                actions=[TaskRecord.next_delivery_at.remove()],
                # Race: as take_attempt; a dispatch acknowledged at the last moment
                # is not reported as given up.
                condition=_unacknowledged(task),
            )
        except UpdateError as error:
            if condition_failed(error):
                return False
            raise
        return True
