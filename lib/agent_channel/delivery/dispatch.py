"""Dispatching a task to a channel agent, and claiming the agent's reply.

Dispatch: the agent must be routable (``routing_expression == "true"``, read
consistently) before the task moves ``running -> delegated``; the message then
goes to the agent's stream (every session) and the topic's stream (UI and
legacy listeners). ``session_topic`` in the message is the topic's
``session_id`` when the topic is private to one session of the agent, else
null: the session it names is the one that should take the work.

Every dispatch carries a generation (how many times the task was delegated) and,
once kept in the agent stream's history, its ``seq`` and ``epoch``. The delegate
transition records the generation, the message and when to redeliver it unless
a session acknowledges it (``delivery.acks``, ``delivery.redelivery``).

Claiming the reply: ``delegated -> done`` at most once; a reply naming an older
generation than the task's is refused (fencing), so it can never complete newer
work. A refusal says why, with the task's status: ``reply_duplicate`` (already
done: drop the copy) or ``reply_not_delegated`` (taken away, e.g. by a grace
cancellation: the reply may be the only copy of an answer, keep it or route it
elsewhere).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from agent_channel import clock
from agent_channel.delivery.broadcast import broadcast_to_stream
from agent_channel.delivery.fanout import BroadcastResult, GoneHandler, encode_checked
from agent_channel.delivery.history import MAX_EPOCH_LENGTH, MAX_SEQ, History, stamp
from agent_channel.delivery.members import stream_connections
from agent_channel.delivery.redelivery import first_redelivery
from agent_channel.delivery.streams import agent_stream, topic_stream
from agent_channel.errors import Refusal
from agent_channel.observability import count, logger
from agent_channel.tasks.model import (
    DeliveryPlan,
    DispatchContext,
    Status,
    Task,
    TransitionRefused,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from agent_channel.delivery.fanout import ConnectionPoster
    from agent_channel.tasks.store import TaskStore


class DispatchError(Refusal):
    code = "dispatch_error"


class TaskNotFound(DispatchError):
    code = "task_not_found"


class AgentNotRoutable(DispatchError):
    code = "agent_not_routable"


class InvalidTransition(DispatchError):
    code = "invalid_transition"


class InvalidComment(DispatchError):
    code = "invalid_comment"


class PresenceChanged(DispatchError):
    code = "presence_changed"


class ReplyRefused(DispatchError):
    """A reply to a task that is not delegated; ``status`` says what it is now."""

    code = "reply_not_claimable"

    def __init__(self, message: str, *, task_id: int, status: Status | None) -> None:
        details = {"task_id": task_id, "status": None if status is None else status.value}
        super().__init__(message, details=details)
        self.status = status


class ReplyDuplicate(ReplyRefused):
    """The task is already done: this reply is a second copy, safe to drop."""

    code = "reply_duplicate"


class ReplyNotDelegated(ReplyRefused):
    """The task was taken away (cancelled by a grace or an unregister, failed, or
    never handed over): this reply may be the only copy of an answer, so the
    backend keeps it or routes it elsewhere."""

    code = "reply_not_delegated"


class ReplyConflict(ReplyRefused):
    """The task is still delegated but the claim met a concurrent write: try again."""

    code = "reply_conflict"


class StaleGeneration(DispatchError):
    code = "stale_generation"


class Comment(NamedTuple):
    """The comment that carries the work, as the plugin shows it to the agent."""

    id: int | None
    content: str
    author_id: int | None
    author_name: str
    topic_id: int
    creative_id: int | None
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "content": self.content,
            "author_id": self.author_id,
            "author_name": self.author_name,
            "topic_id": self.topic_id,
            "creative_id": self.creative_id,
            "created_at": self.created_at,
        }


COMMENT_FIELDS = frozenset(Comment._fields)


def iso8601(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="seconds")


def dispatch_message(
    task: Task, comment: Comment, session_topic: str | None, generation: int = 1
) -> dict[str, Any]:
    return {
        "type": "dispatch",
        "agent_id": task.agent_id,
        "task_id": task.task_id,
        "generation": generation,
        "session_topic": session_topic,
        "comment": comment.as_dict(),
    }


class Dispatched(NamedTuple):
    task: Task
    message: dict[str, Any]
    to_agent: BroadcastResult
    to_topic: BroadcastResult


def default_comment(task: Task, author_name: str = "") -> Comment:
    """The comment a task carries when the backend gives none of its own."""
    return Comment(
        id=task.comment_id,
        content=task.content,
        author_id=task.author_id,
        author_name=author_name,
        topic_id=task.topic_id,
        creative_id=None,
        created_at=iso8601(task.created_at),
    )


MAX_DISPATCH_ATTEMPTS = 3
"""Reads of the agent's presence before a dispatch gives up on presence that keeps
changing under it (each retry follows a subscribe, restore or last one out)."""


def _message(
    task: Task,
    context: DispatchContext,
    comment_fields: Mapping[str, Any] | None,
    generation: int,
) -> dict[str, Any]:
    comment = default_comment(task, context.author_name)
    if comment_fields:
        unknown = set(comment_fields) - COMMENT_FIELDS
        if unknown:
            raise InvalidComment(f"unknown comment fields: {', '.join(sorted(unknown))}")
        comment = comment._replace(**comment_fields)
    if comment.topic_id != task.topic_id:
        raise InvalidComment(f"the comment belongs to topic {comment.topic_id}, not the task's")
    return dispatch_message(task, comment, context.session_topic, generation)


def dispatch(
    tasks: TaskStore,
    task_id: int,
    *,
    client: ConnectionPoster,
    on_gone: GoneHandler | None,
    comment_fields: Mapping[str, Any] | None = None,
    pending_tool_call: str | None = None,
    history: History | None = None,
) -> Dispatched:
    """Hand a running task to its channel agent and tell both streams.

    ``comment_fields`` override the comment built from the task (its content,
    author, comment id and creation time). Raises TaskNotFound, AgentNotRoutable,
    InvalidComment, InvalidTransition, PresenceChanged or PayloadTooLarge; on any
    of them the task is left as it was.
    """
    task = tasks.get(task_id)
    if task is None:
        raise TaskNotFound(f"no task {task_id}")
    generation = task.generation + 1
    for attempt in range(MAX_DISPATCH_ATTEMPTS):
        if attempt:
            count("PresenceRetries")
        context = tasks.dispatch_context(task)
        # Checked before the transition, and again by it: a task must not become
        # delegated to an agent nobody serves.
        if not context.agent_routable:
            raise AgentNotRoutable(f"agent {task.agent_id} is not routable")
        message = _message(task, context, comment_fields, generation)
        # Everything that can fail is done before the transition (the size check, the
        # reads of both streams' members), so a task never ends delegated with its
        # message unsent for a reason we could have seen; after it, posting reports
        # per connection and never raises.
        # The size check counts the seq and epoch the history will add.
        encode_checked({**message, "seq": MAX_SEQ, "epoch": "x" * MAX_EPOCH_LENGTH})
        agent_members = stream_connections(agent_stream(task.agent_id))
        topic_members = stream_connections(topic_stream(task.topic_id))
        if not agent_members:
            # Routing still on with no socket in the stream: the last session is
            # leaving right now. Nobody would receive the work.
            raise AgentNotRoutable(f"agent {task.agent_id} has no open socket")
        plan = DeliveryPlan(
            generation=generation,
            message=json.dumps(message, separators=(",", ":"), ensure_ascii=False),
            next_delivery_at=first_redelivery(clock.now()),
        )
        try:
            # Race: the only session leaves and the same session comes back (a new
            # socket) between these reads and the transition; conditioned on the
            # presence read and on the sockets read still being open, the task
            # cannot become delegated to a socket that is gone.
            delegated = tasks.delegate(
                task,
                pending_tool_call,
                delivery=plan,
                presence_version=context.presence_version,
                connections=agent_members,
            )
            break
        except TransitionRefused as error:
            if not error.guard_failed:
                raise InvalidTransition(f"task {task_id} is not running") from error
            logger.info("presence changed under the dispatch; reading it again")
    else:
        raise PresenceChanged(f"agent {task.agent_id}'s presence kept changing")
    if history is not None:
        # Numbered after the transition: a task that failed to become delegated
        # leaves no dispatch in the history for a resume to hand out.
        message = stamp(history, task.agent_id, message)
    to_agent = broadcast_to_stream(
        agent_stream(task.agent_id),
        message,
        client=client,
        on_gone=on_gone,
        connection_ids=agent_members,
    )
    to_topic = broadcast_to_stream(
        topic_stream(task.topic_id),
        message,
        client=client,
        on_gone=on_gone,
        connection_ids=topic_members,
    )
    logger.info(
        "task dispatched",
        extra={
            "task_id": task_id,
            "agent_deliveries": len(to_agent.delivered),
            "topic_deliveries": len(to_topic.delivered),
        },
    )
    return Dispatched(delegated, message, to_agent, to_topic)


def claim_reply(
    tasks: TaskStore,
    task_id: int,
    *,
    agent_id: int | None = None,
    generation: int | None = None,
) -> Task:
    """delegated -> done, at most once (clears the pending tool call, frees the slot).

    ``agent_id``, when given, must be the task's agent: a reply from another agent
    does not complete someone else's work. ``generation``, when given, must be the
    task's current one: a reply to an older dispatch is refused.
    """
    task = tasks.get(task_id)
    if task is None:
        raise TaskNotFound(f"no task {task_id}")
    if agent_id is not None and task.agent_id != agent_id:
        raise TaskNotFound(f"no task {task_id} for agent {agent_id}")
    if generation is not None and generation != task.generation:
        raise StaleGeneration(
            f"task {task_id} is at generation {task.generation}, not {generation}"
        )
    try:
        return tasks.claim_reply(task, generation=generation)
    except TransitionRefused as error:
        if generation is not None:
            current = tasks.get(task_id)
            if current is not None and current.generation != generation:
                raise StaleGeneration(f"task {task_id} was dispatched again") from error
        # The status condition is the guard: a second claim, or a grace
        # cancellation that got there first, leaves nothing to claim.
        raise _refusal(task_id, error.current or _status_now(tasks, task_id)) from error


def _status_now(tasks: TaskStore, task_id: int) -> Status | None:
    current = tasks.get(task_id)
    return None if current is None else current.status


def _refusal(task_id: int, status: Status | None) -> ReplyRefused:
    """Why a reply was refused, told by the task's status at the refusal."""
    if status is Status.DONE:
        return ReplyDuplicate(
            f"task {task_id} is already done: a duplicate reply", task_id=task_id, status=status
        )
    if status is Status.DELEGATED:
        return ReplyConflict(
            f"task {task_id} is delegated, but the claim met a concurrent write; retry",
            task_id=task_id,
            status=status,
        )
    shown = "gone" if status is None else status.value
    return ReplyNotDelegated(
        f"task {task_id} is not delegated (it is {shown}): the reply was not taken",
        task_id=task_id,
        status=status,
    )
