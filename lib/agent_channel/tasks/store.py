"""The storage interface the task lifecycle runs over.

Every transition is one conditional write (with the slot change in the same
transaction), so whichever of a reply and a grace cancellation lands first wins,
and the other changes nothing: it raises TransitionRefused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from agent_channel.tasks.model import DeliveryPlan, DispatchContext, Status, Task

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence


class TaskStore(Protocol):
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
        """A new task with a fresh id."""

    def get(self, task_id: int) -> Task | None:
        """The task, read consistently; None if there is none."""

    def dispatch_context(self, task: Task) -> DispatchContext:
        """The task's agent routing, topic and author, in one consistent read."""

    def start(self, task: Task) -> Task:
        """queued or pending -> running, taking a slot of the agent's tracker."""

    def delegate(
        self,
        task: Task,
        pending_tool_call: str | None = None,
        *,
        delivery: DeliveryPlan | None = None,
        presence_version: int | None = None,
        connections: Sequence[str] = (),
    ) -> Task:
        """running -> delegated: handed to a channel agent, waiting for its reply. With
        ``delivery``, records the generation, the message and its redelivery time. With
        ``presence_version``, only while the agent's routing is on and its presence
        version is still that one (no last one out, subscribe or restore since), and
        while each of ``connections`` (the sockets the work goes to) is still open."""

    def claim_reply(self, task: Task, *, generation: int | None = None) -> Task:
        """delegated -> done, at most once; clears the pending tool call, frees the slot.
        With ``generation``, only while the task is still of that generation."""

    def cancel_delegated(
        self,
        task: Task,
        *,
        presence_version: int | None = None,
        stale_leases: Sequence[str] = (),
        stale_before: float = 0.0,
        reason: str | None = None,
    ) -> Task:
        """delegated -> cancelled, at most once; clears the pending tool call, frees
        the slot. With ``presence_version``, only while the agent's presence version
        is still that one (no subscribe or restore since it was read), and while each
        lease of ``stale_leases`` (connection ids) is gone or still no newer than
        ``stale_before`` (no heartbeat revived it). ``reason`` is recorded on the task,
        in the same write, for the task.cancelled event."""

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
        """Any of ``from_statuses`` -> cancelled, at most once; clears the pending
        tool call and frees the slot (a no-op for a task that held none). The guards
        and ``reason`` are those of cancel_delegated."""

    def release_slot(self, agent_id: int, task_id: int) -> None:
        """Free a slot; idempotent."""

    def held_slots(self, agent_id: int) -> list[int]:
        """The task ids holding a slot of the agent's tracker."""

    def by_status(
        self,
        agent_id: int,
        status: Status,
        *,
        topic_id: int | None = None,
        limit: int | None = None,
    ) -> list[Task]:
        """An agent's tasks in one status (one topic's, if given), by index: never a
        scan. The index may lag a write by a moment; act through transitions."""
