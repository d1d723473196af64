"""The values the task rules reason about, free of any storage detail."""

from __future__ import annotations

import enum
from typing import NamedTuple


class Status(enum.StrEnum):
    QUEUED = "queued"
    PENDING = "pending"
    RUNNING = "running"
    DELEGATED = "delegated"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


BEFORE_DELEGATION = frozenset({Status.QUEUED, Status.PENDING, Status.RUNNING})
"""Open work not (yet) handed to a channel agent: a topic's queue, and what runs."""

OPEN_STATUSES = BEFORE_DELEGATION | {Status.DELEGATED}
"""Every status a task can still be cancelled from."""


class TransitionRefused(Exception):
    """The task is not in the status the transition starts from (someone else won),
    or a condition the transition was made under no longer holds (``guard_failed``:
    the status was right, another item had changed).

    ``current`` is the task's status when the store could tell it from the refusal
    itself (None: unknown, e.g. a guard failed rather than the status)."""

    def __init__(
        self, message: str, *, guard_failed: bool = False, current: Status | None = None
    ) -> None:
        super().__init__(message)
        self.guard_failed = guard_failed
        self.current = current


class Task(NamedTuple):
    """Work given to an agent on a topic."""

    task_id: int
    topic_id: int
    agent_id: int
    status: Status
    content: str = ""
    author_id: int | None = None
    comment_id: int | None = None
    pending_tool_call: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    generation: int = 0
    """How many times the task was delegated: each dispatch's fencing token."""
    dispatch_message: str | None = None
    """The latest dispatch message (JSON) as sent, for redelivery and resync."""
    acked_generation: int = 0
    """The generation a session of the agent acknowledged (0: none)."""
    delivery_attempts: int = 0
    next_delivery_at: float | None = None
    """When the dispatch is due for redelivery unless acknowledged (None: never)."""

    @property
    def acknowledged(self) -> bool:
        return self.generation > 0 and self.acked_generation == self.generation


class DeliveryPlan(NamedTuple):
    """What a dispatch records on the task in its delegate transition."""

    generation: int
    message: str
    next_delivery_at: float


class DispatchContext(NamedTuple):
    """What dispatching a task needs besides the task, read consistently in one go."""

    agent_routable: bool
    """The agent exists and its routing is on."""
    presence_version: int
    """The agent's presence version as read with its routing."""
    session_topic: str | None
    """The topic's session id when the topic is private to one session, else None."""
    author_name: str
    """The task author's name ("" when the task has no author or it is gone)."""
