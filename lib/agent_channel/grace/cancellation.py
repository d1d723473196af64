"""Grace cancellation: what ``cancel_offline`` does when a grace schedule fires.

Plain functions over a PresenceStore and a TaskBook. Scheduler invokes
the function asynchronously, so at least once and possibly late: every recheck is
made again at run time, and every write is a conditional transition, so a duplicate
run, or a run after the agent came back, changes nothing.

The backend hears of each cancellation through a ``task.cancelled`` event that the
task-event pipe derives from the committed write (the table's stream), not from
this code: no publish can fail after the cancel commits (docs/OPERATIONS.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from agent_channel import clock
from agent_channel.grace.task_book import CancelVerdict, DelegatedTask, TaskBook
from agent_channel.observability import count, logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent_channel.config import Settings
    from agent_channel.grace.scheduler import GraceCancellation
    from agent_channel.presence.model import Presence
    from agent_channel.presence.store import PresenceStore

MAX_ATTEMPTS = 5
"""Rechecks before giving up when presence keeps changing under the cancellation."""

REASON_AGENT_OFFLINE = "agent_offline"
REASON_SESSION_OFFLINE = "session_offline"


class Outcome(enum.StrEnum):
    NO_AGENT = "no_agent"
    ROUTED_AGAIN = "routed_again"
    LIVE_LEASE = "live_lease"
    TOKEN_MISMATCH = "token_mismatch"  # noqa: S105 (an outcome name, not a secret)
    SESSION_BACK = "session_back"
    NO_SESSION_TOPIC = "no_session_topic"
    CANCELLED = "cancelled"
    """The rechecks passed; every delegated task in scope was cancelled or lost."""


class PresenceKeptChanging(Exception):
    """Presence changed under every attempt; the invocation should be retried."""


@dataclass
class Result:
    outcome: Outcome
    cancelled: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "outcome": self.outcome.value,
            "cancelled": self.cancelled,
            "lost": self.lost,
        }


class Proceed(NamedTuple):
    """The rechecks passed on ``seen``; cancel in these topics (None: every topic)."""

    seen: Presence
    topics: list[int] | None
    cutoff: float
    """Leases seen at or before this were stale when the rechecks were made."""


def cancel_offline(
    store: PresenceStore,
    book: TaskBook,
    settings: Settings,
    request: GraceCancellation,
) -> Result:
    """Recheck, then cancel the delegated tasks in scope of a grace cancellation."""
    reason = REASON_SESSION_OFFLINE if request.session_id else REASON_AGENT_OFFLINE
    result = Result(Outcome.CANCELLED)
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            count("PresenceRetries")
        decision = recheck(store, book, settings, request)
        if isinstance(decision, Outcome):
            result.outcome = decision
            return result
        if not _cancel_all(book, decision, request.agent_id, reason, result):
            return result
    logger.warning("presence kept changing under the grace cancellation")
    raise PresenceKeptChanging(f"agent {request.agent_id}")


def recheck(
    store: PresenceStore, book: TaskBook, settings: Settings, request: GraceCancellation
) -> Outcome | Proceed:
    """Whether to act, decided on a consistent read of the agent's presence made
    after reaping its stale leases (docs/GRACE.md, "The rechecks")."""
    cutoff = clock.now() - settings.stale_after_seconds
    presence = _reaped(store, request.agent_id, cutoff)
    if presence is None:
        return Outcome.NO_AGENT
    live = presence.live_leases(cutoff)
    if request.session_id:
        if any(lease.session_id == request.session_id for lease in live):
            # The same session came back: its own topic has its plugin again.
            return Outcome.SESSION_BACK
        topics = book.session_topics(request.agent_id, request.session_id)
        if not topics:
            return Outcome.NO_SESSION_TOPIC
        # Only the session's own topics: a live sibling can still reply elsewhere.
        return Proceed(presence, topics, cutoff)
    if presence.routing_on:
        return Outcome.ROUTED_AGAIN
    if live:
        return Outcome.LIVE_LEASE
    token = presence.subscription_token
    if token and token != request.subscription_token:
        # A newer subscribe owns the agent now; this schedule is from an older one.
        return Outcome.TOKEN_MISMATCH
    return Proceed(presence, None, cutoff)


def _reaped(store: PresenceStore, agent_id: int, cutoff: float) -> Presence | None:
    presence = store.read(agent_id)
    if presence is None:
        return None
    stale = presence.stale_leases(cutoff)
    if not stale:
        return presence
    if presence.routing_on and not presence.live_leases(cutoff):
        # Reaping every lease of a routed agent would leave routing on with no lease
        # at all (invariant 1). The sweeper's settle reaps and clears routing in one
        # transaction, and then schedules an agent-wide grace of its own.
        return presence
    # Reaping (each delete conditioned on the lease still being stale) rather than
    # just ignoring stale leases: a plugin that revives after its lease is gone must
    # restore it, and a restore bumps the presence version that cancel() is
    # conditioned on, so a revival racing this cancellation wins.
    store.reap(stale, cutoff)
    # Decide on what is there after the reap: a lease refreshed by a heartbeat
    # between the read and the reap was not deleted and is live now.
    return store.read(agent_id)


def _cancel_all(
    book: TaskBook,
    go: Proceed,
    agent_id: int,
    reason: str,
    result: Result,
) -> bool:
    """Cancel every task in scope; True if presence changed on the way (the caller
    must recheck before going on).

    A session's own topics are drained first: their queued, pending and running
    tasks are cancelled before any delegated one. Otherwise the backend, told that
    the delegated task was cancelled, could promote the next task of the queue and
    hand it to the session that is gone, where it would hold its slot forever.
    """
    if go.topics is not None:
        queue = [task for topic in go.topics for task in book.queue(agent_id, topic)]
        if _cancel_each(queue, book.cancel_queued, go, reason, result):
            return True
        delegated = [task for topic in go.topics for task in book.delegated(agent_id, topic)]
    else:
        delegated = book.delegated(agent_id)
    return _cancel_each(delegated, book.cancel, go, reason, result)


def _cancel_each(
    tasks: list[DelegatedTask],
    cancel: Callable[[DelegatedTask, Presence, float, str], CancelVerdict],
    go: Proceed,
    reason: str,
    result: Result,
) -> bool:
    """Cancel each task under the presence the rechecks read; True if it changed."""
    for task in tasks:
        verdict = cancel(task, go.seen, go.cutoff, reason)
        if verdict is CancelVerdict.PRESENCE_CHANGED:
            return True
        if verdict is CancelVerdict.LOST:
            if task.task_id not in result.lost:
                result.lost.append(task.task_id)
            continue
        if task.task_id in result.lost:
            # Listed again after a recheck, and this time it was ours.
            result.lost.remove(task.task_id)
        result.cancelled.append(task.task_id)
        count("Cancellations")
    return False
