"""The task store on DynamoDB: the task lifecycle and the agent's resource-tracker slots.

Each transition is one transaction: the status change conditioned on the status
it starts from, the slot taken or freed beside it, and any guard on another item.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from agent_channel import clock
from agent_channel.storage import schema
from agent_channel.storage.counters import next_id
from agent_channel.storage.records import (
    ConnectionRecord,
    LeaseRecord,
    Record,
    SlotRecord,
    TaskRecord,
    TopicRecord,
    UserRecord,
)
from agent_channel.storage.transactions import Refused, commit, retrying
from agent_channel.tasks.model import (
    DeliveryPlan,
    DispatchContext,
    Status,
    Task,
    TransitionRefused,
)

MAX_LEASE_GUARDS = 96
"""Lease or connection guards one transition may carry (100 items: the task, a slot,
the agent and these). A session holds one or two leases and an agent a few
sockets; beyond this many, the rest are left unguarded."""

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    from pynamodb.expressions.condition import Condition
    from pynamodb.expressions.update import Action
    from pynamodb.transactions import TransactWrite


class _Guard(NamedTuple):
    """A condition on another item that a transition's transaction must also meet (a
    ConditionCheck): the transition holds only while what its caller decided on is
    unchanged."""

    model: type[Record]
    key: schema.Key
    condition: Condition


def _delivery_done() -> list[Action]:
    """A task that leaves delegated is never redelivered."""
    return [TaskRecord.next_delivery_at.remove()]


def task_from(record: TaskRecord) -> Task:
    return Task(
        task_id=int(record.task_id),
        topic_id=int(record.topic_id),
        agent_id=int(record.agent_id),
        status=Status(record.status),
        content=record.content or "",
        author_id=None if record.author_id is None else int(record.author_id),
        comment_id=None if record.comment_id is None else int(record.comment_id),
        pending_tool_call=record.pending_tool_call,
        created_at=float(record.created_at),
        updated_at=float(record.updated_at),
        generation=int(record.generation or 0),
        dispatch_message=record.dispatch_message,
        acked_generation=int(record.acked_generation or 0),
        delivery_attempts=int(record.delivery_attempts or 0),
        next_delivery_at=(
            None if record.next_delivery_at is None else float(record.next_delivery_at)
        ),
    )


def _refused_status(item: Mapping[str, Any] | None) -> Status | None:
    """The task's status as a refused transition found it, from the item its failed
    condition returned; None when the task's own condition did not fail."""
    if item and "status" in item:
        return Status(item["status"]["S"])
    return None


class DynamoTaskStore:
    def create(
        self,
        *,
        topic_id: int,
        agent_id: int,
        content: str,
        author_id: int | None = None,
        comment_id: int | None = None,
        status: Status = Status.QUEUED,
    ) -> Task:
        task_id = next_id("task")
        now = clock.now()
        record = TaskRecord(
            *schema.task_key(task_id),
            task_id=task_id,
            topic_id=topic_id,
            agent_id=agent_id,
            status=status.value,
            content=content,
            author_id=author_id,
            comment_id=comment_id,
            created_at=now,
            updated_at=now,
            gsi1pk=schema.task_status_index(agent_id, status.value),
            gsi1sk=schema.task_status_sort(topic_id, task_id),
        )
        # A fresh id from the counter; never overwrite a task, whatever the counter says.
        retrying(lambda: record.save(condition=TaskRecord.pk.does_not_exist()))
        return task_from(record)

    def get(self, task_id: int) -> Task | None:
        try:
            record = TaskRecord.get(*schema.task_key(task_id), consistent_read=True)
        except TaskRecord.DoesNotExist:
            return None
        return task_from(record)

    def dispatch_context(self, task: Task) -> DispatchContext:
        # Consistent: routing is a presence decision and must not rest on a stale read.
        agent_key = schema.user_key(task.agent_id)
        topic_key = schema.topic_key(task.topic_id)
        keys = [agent_key, topic_key]
        author_key = None if task.author_id is None else schema.user_key(task.author_id)
        if author_key is not None and author_key != agent_key:
            keys.append(author_key)
        found = {(r.pk, r.sk): r for r in Record.batch_get(keys, consistent_read=True)}
        agent, topic = found.get(agent_key), found.get(topic_key)
        author = found.get(author_key) if author_key is not None else None
        routable = isinstance(agent, UserRecord) and agent.routing_expression == "true"
        return DispatchContext(
            agent_routable=routable,
            presence_version=(
                int(agent.presence_version or 0) if isinstance(agent, UserRecord) else 0
            ),
            session_topic=(
                topic.session_id if isinstance(topic, TopicRecord) and topic.session_id else None
            ),
            author_name=author.name if isinstance(author, UserRecord) else "",
        )

    def start(self, task: Task) -> Task:
        return self._transition(
            task, {Status.QUEUED, Status.PENDING}, Status.RUNNING, take_slot=True
        )

    def delegate(
        self,
        task: Task,
        pending_tool_call: str | None = None,
        *,
        delivery: DeliveryPlan | None = None,
        presence_version: int | None = None,
        connections: Sequence[str] = (),
    ) -> Task:
        extra: list[Action] = (
            [TaskRecord.pending_tool_call.set(pending_tool_call)] if pending_tool_call else []
        )
        if delivery is not None:
            # In the same write as the transition: a delegated task always carries
            # the message to redeliver and the generation its replies must name.
            extra += [
                TaskRecord.generation.set(delivery.generation),
                TaskRecord.dispatch_message.set(delivery.message),
                TaskRecord.acked_generation.remove(),
                TaskRecord.acked_at.remove(),
                TaskRecord.delivery_attempts.set(1),
                TaskRecord.next_delivery_at.set(delivery.next_delivery_at),
            ]
        guards = []
        if presence_version is not None:
            # A dispatch decided on this presence (routing on, these stream members):
            # a last one out since then switched routing off, and a subscribe or
            # restore since then bumped the version and may hold a socket the
            # dispatch never read; either way the task must not become delegated
            # to the connections it read.
            guards.append(
                _Guard(
                    UserRecord,
                    schema.user_key(task.agent_id),
                    (UserRecord.routing_expression == "true")
                    & schema.presence_version_is(presence_version),
                )
            )
        for connection_id in connections[:MAX_LEASE_GUARDS]:
            # Race: a socket the dispatch will post to is leaving ($disconnect removes
            # its connection item first); if its session then comes back, the
            # grace is withdrawn and nobody would ever get the task.
            guards.append(
                _Guard(
                    ConnectionRecord,
                    schema.connection_key(connection_id),
                    ConnectionRecord.pk.exists(),
                )
            )
        delegated = self._transition(
            task, {Status.RUNNING}, Status.DELEGATED, extra_actions=extra, guards=guards
        )
        if pending_tool_call:
            delegated = delegated._replace(pending_tool_call=pending_tool_call)
        if delivery is not None:
            delegated = delegated._replace(
                generation=delivery.generation,
                dispatch_message=delivery.message,
                acked_generation=0,
                delivery_attempts=1,
                next_delivery_at=delivery.next_delivery_at,
            )
        return delegated

    def claim_reply(self, task: Task, *, generation: int | None = None) -> Task:
        fence: Condition | None = None
        if generation is not None:
            # Race: a re-dispatch between the read and this write makes the reply
            # late; it names an older generation and must not complete newer work.
            fence = TaskRecord.generation == generation
        done = self._transition(
            task,
            {Status.DELEGATED},
            Status.DONE,
            extra_actions=[TaskRecord.pending_tool_call.remove(), *_delivery_done()],
            free_slot=True,
            extra_condition=fence,
        )
        return done._replace(pending_tool_call=None, next_delivery_at=None)

    def cancel_delegated(
        self,
        task: Task,
        *,
        presence_version: int | None = None,
        stale_leases: Sequence[str] = (),
        stale_before: float = 0.0,
        reason: str | None = None,
    ) -> Task:
        return self.cancel(
            task,
            from_statuses={Status.DELEGATED},
            presence_version=presence_version,
            stale_leases=stale_leases,
            stale_before=stale_before,
            reason=reason,
        )

    def cancel(
        self,
        task: Task,
        *,
        from_statuses: Collection[Status],
        presence_version: int | None = None,
        stale_leases: Sequence[str] = (),
        stale_before: float = 0.0,
        reason: str | None = None,
    ) -> Task:
        guards = []
        if presence_version is not None:
            # A grace cancellation decided on this presence: an agent (or session)
            # that came back since then bumped the version, and then must keep its work.
            guards.append(
                _Guard(
                    UserRecord,
                    schema.user_key(task.agent_id),
                    schema.presence_version_is(presence_version),
                )
            )
        for connection_id in stale_leases[:MAX_LEASE_GUARDS]:
            # A heartbeat's touch revives a stale lease it finds unreaped without
            # bumping the version: a session back that way must keep its work too.
            guards.append(
                _Guard(
                    LeaseRecord,
                    schema.lease_key(task.agent_id, connection_id),
                    LeaseRecord.pk.does_not_exist() | (LeaseRecord.last_seen_at <= stale_before),
                )
            )
        cancelled = self._transition(
            task,
            set(from_statuses),
            Status.CANCELLED,
            extra_actions=[
                TaskRecord.pending_tool_call.remove(),
                *_delivery_done(),
                # In the same write as the status: the stream record that becomes
                # the task.cancelled event carries it (the transactional outbox).
                *([TaskRecord.cancel_reason.set(reason)] if reason else []),
            ],
            free_slot=True,
            guards=guards,
        )
        return cancelled._replace(pending_tool_call=None, next_delivery_at=None)

    def _transition(
        self,
        task: Task,
        allowed_from: set[Status],
        to: Status,
        *,
        extra_actions: Sequence[Action] = (),
        take_slot: bool = False,
        free_slot: bool = False,
        guards: Sequence[_Guard] = (),
        extra_condition: Condition | None = None,
    ) -> Task:
        """Move a task between statuses with the slot change in the same transaction, so
        a crash can neither free a slot of a task still running nor leak one.
        The task returned shows the status and time written; a caller whose
        ``extra_actions`` write other fields shows those itself."""
        now = clock.now()
        condition = TaskRecord.status.is_in(*(status.value for status in allowed_from))
        if extra_condition is not None:
            condition = condition & extra_condition
        actions = [
            TaskRecord.status.set(to.value),
            TaskRecord.updated_at.set(now),
            TaskRecord.gsi1pk.set(schema.task_status_index(task.agent_id, to.value)),
            *extra_actions,
        ]
        slot_pk, slot_sk = schema.slot_key(task.agent_id, task.task_id)

        def build(writes: TransactWrite) -> None:
            # The status condition is the whole race guard between transitions: a
            # reply and a grace cancellation both start from delegated, and only the
            # first commits.
            writes.update(
                TaskRecord(*schema.task_key(task.task_id)),
                actions=actions,
                condition=condition,
                # A refusal then carries the task as it is, so the caller can say
                # why (done already, cancelled, ...) without another read.
                return_values="ALL_OLD",
            )
            if take_slot:
                writes.save(
                    SlotRecord(
                        slot_pk,
                        slot_sk,
                        agent_id=task.agent_id,
                        task_id=task.task_id,
                        acquired_at=now,
                    )
                )
            if free_slot:
                # Deleting a slot that is not there is a no-op: release is idempotent.
                writes.delete(SlotRecord(slot_pk, slot_sk))
            for guard in guards:
                writes.condition_check(guard.model, *guard.key, guard.condition)

        try:
            commit(build)
        except Refused as refused:
            task_key = schema.task_key(task.task_id)
            raise TransitionRefused(
                f"task {task.task_id} is not {sorted(allowed_from)}",
                # If the task's own status condition held, what failed was a guard.
                guard_failed=task_key not in refused.keys,
                current=_refused_status(refused.items.get(task_key)),
            ) from refused
        # A transaction returns no item, and a read after it would cost one more
        # request: the new task is the old one with what this transaction wrote
        # (every other field of a task is fixed when it is created).
        return task._replace(status=to, updated_at=now)

    def release_slot(self, agent_id: int, task_id: int) -> None:
        SlotRecord(*schema.slot_key(agent_id, task_id)).delete()

    def held_slots(self, agent_id: int) -> list[int]:
        return [
            int(record.task_id)
            for record in Record.query(schema.slots_partition(agent_id), consistent_read=True)
            if isinstance(record, SlotRecord)
        ]

    def by_status(
        self,
        agent_id: int,
        status: Status,
        *,
        topic_id: int | None = None,
        limit: int | None = None,
    ) -> list[Task]:
        sort_condition = None
        if topic_id is not None:
            sort_condition = Record.gsi1sk.startswith(schema.topic_tasks_prefix(topic_id))
        return [
            task_from(record)
            for record in Record.gsi1.query(
                schema.task_status_index(agent_id, status.value), sort_condition, limit=limit
            )
            if isinstance(record, TaskRecord)
        ]
