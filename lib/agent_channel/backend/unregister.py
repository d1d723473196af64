"""Unregistering an agent: closing it for work, for good.

In this order, each step idempotent, so a second run (or a run after a crash
half-way) finishes what the first began and changes nothing else:

1. close: one transaction marks the agent unregistered, turns routing off and
   deletes every lease, conditioned on the presence version it read (a subscribe
   in between makes it read again). After it, no subscribe or restore can commit:
   their own condition refuses an unregistered agent.
2. sockets: every connection of the agent's stream (read after the close, so a
   connect that committed before it is among them) is closed through
   ``@connections`` DELETE and removed as its ``$disconnect`` would remove it.
3. tasks: queued, pending and running tasks are cancelled first, then delegated
   ones (the same order as a session's grace, for the same reason), each freeing
   its slot and recording the reason ``agent_unregistered`` in the same write (the
   task-event pipe turns each into one ``task.cancelled`` event).
4. the agent's session topics are archived; 5. its grace schedules withdrawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from agent_channel import clock
from agent_channel.delivery.closing import close_connections
from agent_channel.delivery.members import stream_connections
from agent_channel.delivery.streams import agent_stream
from agent_channel.errors import Refusal
from agent_channel.identity import accounts
from agent_channel.observability import count, logger
from agent_channel.tasks.model import (
    BEFORE_DELEGATION,
    OPEN_STATUSES,
    Status,
    Task,
    TransitionRefused,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient

    from agent_channel.grace.scheduler import GraceScheduler
    from agent_channel.presence.model import Presence
    from agent_channel.presence.store import PresenceStore
    from agent_channel.tasks.store import TaskStore

REASON_UNREGISTERED = "agent_unregistered"

MAX_CLOSE_ATTEMPTS = 5
"""Reads of the agent's presence before giving up when subscribes keep landing."""


class AgentNotFound(Refusal):
    code = "not_found"


class PresenceKeptChanging(Refusal):
    code = "conflict"


@dataclass
class Unregistered:
    agent_id: int
    already: bool
    """The agent was unregistered before this run (this run only finished the rest)."""
    closed_connections: list[str] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    archived_topics: list[int] = field(default_factory=list)
    withdrawn_schedules: int = 0


class Services(NamedTuple):
    """What unregistering reaches: the stores, the scheduler, the sockets."""

    presence: PresenceStore
    tasks: TaskStore
    scheduler: GraceScheduler
    management: Callable[[], ApiGatewayManagementApiClient]


def unregister_agent(
    services: Services, agent_id: int, *, acting_user_id: int | None = None
) -> Unregistered:
    """Close the agent for work. ``acting_user_id``, when given, must own the agent:
    otherwise the answer is ``not_found`` whether or not the agent exists."""
    agent = accounts.get_user(agent_id)
    if agent is None or agent.created_by is None:
        raise AgentNotFound(f"no agent {agent_id}")
    if acting_user_id is not None and agent.created_by != acting_user_id:
        raise AgentNotFound(f"no agent {agent_id}")
    result = Unregistered(agent_id, already=agent.unregistered)
    closed = _close(services.presence, agent_id, agent.created_by)
    result.closed_connections = _close_sockets(services, agent_id)
    _cancel_open_work(services, agent_id, result)
    now = clock.now()
    sessions = {lease.session_id for lease in closed.leases}
    for topic in accounts.session_topics(agent_id):
        sessions.add(topic.session_id or "")
        if accounts.archive_topic(topic.topic_id, now):
            result.archived_topics.append(topic.topic_id)
    result.withdrawn_schedules = _withdraw(services.scheduler, agent_id, sessions)
    logger.info(
        "agent unregistered",
        extra={
            "already": result.already,
            "closed": len(result.closed_connections),
            "cancelled": len(result.cancelled),
            "archived": len(result.archived_topics),
        },
    )
    return result


def _close(presence: PresenceStore, agent_id: int, owner_id: int) -> Presence:
    for attempt in range(MAX_CLOSE_ATTEMPTS):
        if attempt:
            count("PresenceRetries")
        seen = presence.read(agent_id)
        if seen is None:
            raise AgentNotFound(f"no agent {agent_id}")
        if presence.close_agent(seen, owner_id, clock.now()):
            return seen
    raise PresenceKeptChanging(f"agent {agent_id}: presence kept changing; try again")


def _close_sockets(services: Services, agent_id: int) -> list[str]:
    """Close every socket of the agent's stream and remove it as $disconnect would
    (whose own run later finds the lease gone and does nothing)."""
    stream = agent_stream(agent_id)
    members = stream_connections(stream)
    if not members:
        return []
    # A socket closed already (Gone) only has its items left to remove; one that
    # could not be closed keeps them, and a second unregister tries it again.
    closed, _ = close_connections(members, client=services.management())
    for connection_id in closed:
        services.presence.drop_connection(connection_id, stream)
    return closed


def _cancel_open_work(services: Services, agent_id: int, result: Unregistered) -> None:
    tasks = services.tasks
    found: dict[int, Task] = {}
    for status in sorted(OPEN_STATUSES):
        for task in tasks.by_status(agent_id, status):
            found[task.task_id] = task
    # The status index may lag; the slots are read consistently, and every running
    # or delegated task holds one.
    for task_id in tasks.held_slots(agent_id):
        if task_id not in found:
            held = tasks.get(task_id)
            if held is not None:
                found[task_id] = held
    # The queue first, as a session's grace does: a backend told of a cancelled
    # delegated task must find nothing left to promote.
    ordered = sorted(found.values(), key=lambda task: task.status not in BEFORE_DELEGATION)
    for task in ordered:
        try:
            tasks.cancel(task, from_statuses=OPEN_STATUSES, reason=REASON_UNREGISTERED)
        except TransitionRefused:
            continue  # finished meanwhile (a reply won) or cancelled by an earlier run
        result.cancelled.append(task.task_id)
        count("Cancellations")
    # A slot whose task is no longer open is a leak (it cannot happen through the
    # store's transitions, but release is idempotent and the agent is closed).
    for task_id in tasks.held_slots(agent_id):
        held = tasks.get(task_id)
        if held is None or held.status not in (Status.RUNNING, Status.DELEGATED):
            tasks.release_slot(agent_id, task_id)


def _withdraw(scheduler: GraceScheduler, agent_id: int, sessions: set[str]) -> int:
    """The agent-wide schedule and those of every session that held a lease or has
    a topic. A schedule of another session (one that left, with no topic) may stay:
    it would find no session topic and do nothing."""
    try:
        return scheduler.withdraw_all(agent_id, sessions)
    except Exception:
        # Harmless if left: cancel_offline finds the agent unroutable with nothing
        # open. A second unregister withdraws them.
        logger.warning("could not withdraw the agent's grace schedules", exc_info=True)
        return 0
