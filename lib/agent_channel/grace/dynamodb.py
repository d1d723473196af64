"""The task book of grace cancellation on DynamoDB: index paths to an agent's
delegated tasks and a session's own topics, and the guarded delegated -> cancelled."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_channel.grace.task_book import CancelVerdict, DelegatedTask
from agent_channel.storage import schema
from agent_channel.storage.records import Record, TopicRecord
from agent_channel.tasks.model import BEFORE_DELEGATION, Status, Task, TransitionRefused

if TYPE_CHECKING:
    from collections.abc import Collection

    from agent_channel.presence.model import Presence
    from agent_channel.tasks.store import TaskStore


class DynamoTaskBook:
    def __init__(self, tasks: TaskStore) -> None:
        self._tasks = tasks

    def delegated(self, agent_id: int, topic_id: int | None = None) -> list[DelegatedTask]:
        return [
            DelegatedTask(task.task_id, task.agent_id, task.topic_id)
            for task in self._tasks.by_status(agent_id, Status.DELEGATED, topic_id=topic_id)
        ]

    def session_topics(self, agent_id: int, session_id: str) -> list[int]:
        return [
            int(record.topic_id)
            for record in Record.gsi1.query(
                schema.session_topics_index(agent_id),
                Record.gsi1sk == schema.session_topic_sort(session_id),
            )
            if isinstance(record, TopicRecord)
        ]

    def queue(self, agent_id: int, topic_id: int) -> list[DelegatedTask]:
        return [
            DelegatedTask(task.task_id, task.agent_id, task.topic_id, task.status)
            for status in sorted(BEFORE_DELEGATION)
            for task in self._tasks.by_status(agent_id, status, topic_id=topic_id)
        ]

    def cancel(
        self, task: DelegatedTask, seen: Presence, cutoff: float, reason: str
    ) -> CancelVerdict:
        return self._cancel(task, seen, cutoff, reason, {Status.DELEGATED})

    def cancel_queued(
        self, task: DelegatedTask, seen: Presence, cutoff: float, reason: str
    ) -> CancelVerdict:
        return self._cancel(task, seen, cutoff, reason, BEFORE_DELEGATION)

    def _cancel(
        self,
        task: DelegatedTask,
        seen: Presence,
        cutoff: float,
        reason: str,
        from_statuses: Collection[Status],
    ) -> CancelVerdict:
        target = Task(task.task_id, task.topic_id, task.agent_id, task.status)
        try:
            self._tasks.cancel(
                target,
                from_statuses=from_statuses,
                presence_version=seen.version,
                # Race: with every lease stale and routing still on, the recheck
                # does not reap, and a heartbeat's touch revives a stale lease
                # without bumping the version; these guards make that revival win.
                stale_leases=[lease.connection_id for lease in seen.stale_leases(cutoff)],
                stale_before=cutoff,
                reason=reason,
            )
        except TransitionRefused as error:
            # Refused: either the task left the statuses cancelled from (a reply
            # claimed it first, or an earlier run cancelled it), or a guard failed
            # (the agent came back). The refusal's own copy of the task (else a
            # consistent read) tells which.
            current = error.current
            if current is None:
                found = self._tasks.get(task.task_id)
                current = None if found is None else found.status
            if current is None or current not in from_statuses:
                return CancelVerdict.LOST
            return CancelVerdict.PRESENCE_CHANGED
        return CancelVerdict.CANCELLED
