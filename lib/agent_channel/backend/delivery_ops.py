"""The delivery ops of the backend: dispatch, permission decisions, replies and
broadcasts. Served by the delivery function (``delivery_commands``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_channel.backend.router import Args, CommandContext, CommandError, OpSet
from agent_channel.delivery import decisions, dispatch
from agent_channel.delivery.broadcast import broadcast_to_stream
from agent_channel.delivery.streams import agent_stream, topic_stream
from agent_channel.observability import bind_ids

ops = OpSet()

if TYPE_CHECKING:
    from agent_channel.delivery.fanout import BroadcastResult


def _delivery(result: BroadcastResult) -> dict[str, Any]:
    return result.as_dict()


@ops.op("dispatch", "hand a running task to its channel agent (running -> delegated)")
def _dispatch(args: Args, context: CommandContext) -> dict[str, Any]:
    task_id = args.integer("task_id")
    # On every line and on the trace, so one dispatch is followed to each post.
    bind_ids(task_id=task_id)
    acting_user_id = args.optional_integer("acting_user_id")
    if acting_user_id is not None:
        # Imported on first use: only a backend acting for a user loads the account
        # records (cold start).
        from agent_channel.identity import acting

        # Checked before anything is written; a missing task gets the same answer.
        found = context.tasks().get(task_id)
        acting.check_may_dispatch(acting_user_id, found.topic_id if found else None)
    pending_tool_call = args.optional_string("pending_tool_call", max_length=1024)
    comment = _comment_patch(args.optional_object("comment"))
    done = dispatch.dispatch(
        context.tasks(),
        task_id,
        client=context.management(),
        on_gone=context.on_gone(),
        comment_fields=comment,
        pending_tool_call=pending_tool_call,
        history=context.history(),
    )
    bind_ids(agent_id=done.task.agent_id)
    return {
        "task_id": task_id,
        "status": done.task.status.value,
        "dispatched": done.message,
        "agent_stream": _delivery(done.to_agent),
        "topic_stream": _delivery(done.to_topic),
    }


def _comment_patch(comment: Args | None) -> dict[str, Any] | None:
    """The comment fields the backend gave, each validated; the rest come from the task."""
    if comment is None:
        return None
    patch: dict[str, Any] = {}
    for name in ("id", "author_id", "topic_id", "creative_id"):
        if comment.has(name):
            patch[name] = comment.optional_integer(name)
    for name in ("content", "author_name", "created_at"):
        if comment.has(name):
            patch[name] = comment.optional_string(name)
    return patch


@ops.op("decide_permission", "record a permission decision (first wins) and push it to the agent")
def _decide(args: Args, context: CommandContext) -> dict[str, Any]:
    agent_id = args.integer("agent_id")
    acting_user_id = args.optional_integer("acting_user_id")
    decided_by = args.optional_integer("decided_by") or acting_user_id
    if decided_by is None:
        raise CommandError("invalid_command", "'decided_by' is required")
    if acting_user_id is not None:
        if decided_by != acting_user_id:
            raise CommandError("invalid_command", "'decided_by' must be the acting user")
        from agent_channel.identity import acting

        acting.check_may_decide(acting_user_id, agent_id)
    decided = decisions.decide(
        context.decisions(),
        agent_id=agent_id,
        request_id=args.string("request_id", max_length=decisions.MAX_REQUEST_ID_LENGTH),
        behavior=args.string("behavior", choices=tuple(b.value for b in decisions.Behavior)),
        decided_by=decided_by,
        reason=args.optional_string("reason", max_length=decisions.MAX_REASON_LENGTH),
        client=context.management(),
        on_gone=context.on_gone(),
        history=context.history(),
    )
    record = decided.record
    return {
        "agent_id": record.agent_id,
        "request_id": record.request_id,
        "behavior": record.behavior,
        "decided_at": record.decided_at,
        "decided_by": record.decided_by,
        "reason": record.reason,
        **_delivery(decided.broadcast),
    }


@ops.op("claim_reply", "complete a delegated task with its agent's reply (at most once)")
def _claim_reply(args: Args, context: CommandContext) -> dict[str, Any]:
    task = dispatch.claim_reply(
        context.tasks(),
        args.integer("task_id"),
        agent_id=args.optional_integer("agent_id"),
        generation=args.optional_integer("generation"),
    )
    return {"task_id": task.task_id, "status": task.status.value}


@ops.op("broadcast", "send a JSON object to an agent's or a topic's stream")
def _broadcast(args: Args, context: CommandContext) -> dict[str, Any]:
    agent_id, topic_id = args.optional_integer("agent_id"), args.optional_integer("topic_id")
    if (agent_id is None) == (topic_id is None):
        raise CommandError("invalid_command", "give exactly one of 'agent_id' and 'topic_id'")
    stream = agent_stream(agent_id) if agent_id is not None else topic_stream(topic_id or 0)
    result = broadcast_to_stream(
        stream, args.raw_object("payload"), client=context.management(), on_gone=context.on_gone()
    )
    return _delivery(result)
