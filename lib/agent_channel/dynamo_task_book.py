"""The task book of grace cancellation on DynamoDB: index paths to an agent's
delegated tasks and session topics, and the guarded delegated -> cancelled."""

from __future__ import annotations

from pynamodb.expressions.condition import Condition

from agent_channel import tasks
from agent_channel.accounts import session_topic_key
from agent_channel.cancellation import DelegatedTask, Verdict
from agent_channel.models import Record, TaskRecord, TopicRecord, UserRecord, user_pk
from agent_channel.presence_types import Presence


def presence_unchanged(seen: Presence) -> tasks.Guard:
    """Holds while no subscribe or restore has happened since ``seen`` was read.

    Every lease add bumps the agent's presence_version, and only a lease add can
    make an agent (or a session) come back: a cancellation guarded by this cannot
    commit after the agent reconnected, however late it runs.
    """
    condition: Condition
    if seen.version:
        condition = UserRecord.presence_version == seen.version
    else:
        condition = UserRecord.presence_version.does_not_exist() | (
            UserRecord.presence_version == 0
        )
    return tasks.Guard(UserRecord, user_pk(seen.agent_id), "USER", condition)


class DynamoTaskBook:
    def delegated(self, agent_id: int, topic_id: int | None = None) -> list[DelegatedTask]:
        return [
            DelegatedTask(int(task.task_id), int(task.agent_id), int(task.topic_id))
            for task in tasks.delegated_tasks(agent_id, topic_id)
        ]

    def session_topics(self, agent_id: int, session_id: str) -> list[int]:
        return [
            int(record.topic_id)
            for record in Record.gsi1.query(session_topic_key(agent_id, session_id))
            if isinstance(record, TopicRecord)
        ]

    def cancel(self, task: DelegatedTask, seen: Presence) -> Verdict:
        pk, sk = tasks.task_key(task.task_id)
        record = TaskRecord(pk, sk, task_id=task.task_id, agent_id=task.agent_id)
        try:
            tasks.cancel_delegated_if(record, [presence_unchanged(seen)])
        except tasks.TransitionRefused:
            # Refused: either the task left delegated (a reply claimed it first, or an
            # earlier run cancelled it), or the guard failed (the agent came back), or
            # the transaction met a concurrent one. A consistent read tells which.
            current = tasks.get_task(task.task_id)
            if current is None or current.status != tasks.Status.DELEGATED:
                return Verdict.LOST
            return Verdict.PRESENCE_CHANGED
        return Verdict.CANCELLED
