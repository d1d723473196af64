"""The task book of grace cancellation: the interface ``cancel_offline`` runs over.

It finds an agent's delegated tasks and a session's own topics by index, and
cancels a task only while the agent's presence is still as the recheck read it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NamedTuple, Protocol

from agent_channel.tasks.model import Status

if TYPE_CHECKING:
    from agent_channel.presence.model import Presence


class CancelVerdict(enum.StrEnum):
    CANCELLED = "cancelled"
    LOST = "lost"
    """No longer in the status cancelled from: a reply (or an earlier run of this
    schedule) got it first."""
    PRESENCE_CHANGED = "presence_changed"
    """Still delegated, but presence changed since the recheck: decide again."""


class DelegatedTask(NamedTuple):
    """A task in scope of a grace cancellation, as the index listed it."""

    task_id: int
    agent_id: int
    topic_id: int
    status: Status = Status.DELEGATED


class TaskBook(Protocol):
    def delegated(self, agent_id: int, topic_id: int | None = None) -> list[DelegatedTask]:
        """The agent's delegated tasks (of one topic, if given), by a key or an
        index path, never a scan. May lag; cancel() is what decides."""

    def queue(self, agent_id: int, topic_id: int) -> list[DelegatedTask]:
        """The agent's queued, pending and running tasks of one topic, by index; may
        lag, cancel_queued() is what decides."""

    def session_topics(self, agent_id: int, session_id: str) -> list[int]:
        """The topics private to this session of the agent."""

    def cancel(
        self, task: DelegatedTask, seen: Presence, cutoff: float, reason: str
    ) -> CancelVerdict:
        """delegated -> cancelled (recording ``reason``), clearing the pending tool
        call and releasing the slot, in one write that holds only while the agent's
        presence is still as ``seen`` (no lease added, and no lease stale at
        ``cutoff`` refreshed since), so the rechecks still hold at the moment it
        commits."""

    def cancel_queued(
        self, task: DelegatedTask, seen: Presence, cutoff: float, reason: str
    ) -> CancelVerdict:
        """queued, pending or running -> cancelled, releasing the slot of running
        work, under the same conditions as cancel()."""
