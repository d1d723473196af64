"""The task and presence ops of the backend: create and list an agent's tasks, a
look at its presence, and unregistering an agent (which ends its tasks and its
presence). Served by the delivery function (``delivery_commands``).
"""

from __future__ import annotations

from typing import Any

from agent_channel import clock
from agent_channel.backend.router import Args, CommandContext, CommandError, OpSet
from agent_channel.config import settings
from agent_channel.tasks.model import Status, Task

MAX_CONTENT = 64 * 1024
MAX_LISTED_TASKS = 500

ops = OpSet()


def _not_found(what: str) -> CommandError:
    return CommandError("not_found", f"no {what}")


def _task(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "topic_id": task.topic_id,
        "agent_id": task.agent_id,
        "status": task.status.value,
        "content": task.content,
        "updated_at": task.updated_at,
    }


@ops.op("create_task", "create a task for an agent on a topic; start: true makes it running")
def _create_task(args: Args, context: CommandContext) -> dict[str, Any]:
    # Imported on first use, as in the ops below: a backend process that only
    # dispatches and decides never loads the account records (cold start).
    from agent_channel.identity import accounts

    agent_id, topic_id = args.integer("agent_id"), args.integer("topic_id")
    agent = accounts.get_user(agent_id)
    if agent is None or not agent.is_agent:
        raise _not_found(f"agent {agent_id}")
    if agent.unregistered:
        raise CommandError("agent_unregistered", f"agent {agent_id} is unregistered")
    topic = accounts.get_topic(topic_id)
    if topic is None:
        raise _not_found(f"topic {topic_id}")
    if topic.archived:
        raise CommandError("topic_archived", f"topic {topic_id} is archived")
    tasks = context.tasks()
    task = tasks.create(
        topic_id=topic_id,
        agent_id=agent_id,
        content=args.string("content", max_length=MAX_CONTENT),
        author_id=args.optional_integer("author_id"),
    )
    if args.flag("start"):
        # Running is where a task holds its slot, and where dispatch starts from.
        task = tasks.start(task)
    return _task(task)


@ops.op("presence", "an agent's routing and leases, read consistently", idempotency="read")
def _presence(args: Args, context: CommandContext) -> dict[str, Any]:
    agent_id = args.integer("agent_id")
    presence = context.presence().read(agent_id)
    if presence is None:
        raise _not_found(f"agent {agent_id}")
    now = clock.now()
    cutoff = now - settings().stale_after_seconds
    return {
        "agent_id": agent_id,
        "routing": presence.routing_on,
        "live_sessions": len(presence.live_leases(cutoff)),
        "leases": [
            {
                "connection_id": lease.connection_id,
                "session_id": lease.session_id,
                "last_seen_seconds_ago": round(now - lease.last_seen_at, 1),
                "live": lease.is_live(cutoff),
            }
            for lease in presence.leases
        ],
    }


@ops.op(
    "list_tasks",
    "an agent's tasks, by status (all statuses unless one is given)",
    idempotency="read",
)
def _list_tasks(args: Args, context: CommandContext) -> dict[str, Any]:
    agent_id = args.integer("agent_id")
    wanted = args.optional_string("status", choices=tuple(status.value for status in Status))
    found: list[dict[str, Any]] = []
    for status in (Status(wanted),) if wanted else tuple(Status):
        # The status index, never a scan; it may lag a write by a moment.
        for task in context.tasks().by_status(agent_id, status, limit=MAX_LISTED_TASKS):
            found.append(_task(task))
    found.sort(key=lambda task: task["task_id"])
    return {"agent_id": agent_id, "tasks": found[:MAX_LISTED_TASKS]}


@ops.op(
    "unregister_agent",
    "close an agent for work: cancel its open tasks, close its sockets, archive its "
    "session topics (acting_user_id, when given, must own it); idempotent",
)
def _unregister_agent(args: Args, context: CommandContext) -> dict[str, Any]:
    from agent_channel.backend import unregister

    services = unregister.Services(
        presence=context.presence(),
        tasks=context.tasks(),
        scheduler=context.scheduler(),
        management=context.closer,
    )
    done = unregister.unregister_agent(
        services, args.integer("agent_id"), acting_user_id=args.optional_integer("acting_user_id")
    )
    return {
        "agent_id": done.agent_id,
        "already_unregistered": done.already,
        "closed_connections": done.closed_connections,
        "cancelled": done.cancelled,
        "archived_topics": done.archived_topics,
        "withdrawn_schedules": done.withdrawn_schedules,
    }
