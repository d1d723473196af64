"""The operator's backend commands: accounts, tokens, topics, tasks, and a look at
an agent's presence. Registered into the command router (``router.OPS``), so
they are reachable the same three ways as every op: the backend Lambda
function, the local stack's ``/_backend`` endpoint, and the command line.

A token is returned only by ``issue_token``, the one moment it exists in clear.
"""

from __future__ import annotations

from typing import Any

from agent_channel import clock
from agent_channel.backend import unregister
from agent_channel.backend.router import Args, CommandContext, CommandError, op
from agent_channel.config import CHANNEL_AGENT_MODEL, settings
from agent_channel.identity import accounts
from agent_channel.tasks.model import Status, Task

MAX_NAME = 200
MAX_CONTENT = 64 * 1024
MAX_LISTED_TASKS = 500


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


@op("create_user", "create a human user")
def _create_user(args: Args, context: CommandContext) -> dict[str, Any]:
    user = accounts.create_user(args.string("name", max_length=MAX_NAME))
    return {"user_id": user.user_id, "name": user.name}


@op("issue_token", "mint a bearer token for a user (shown once)")
def _issue_token(args: Args, context: CommandContext) -> dict[str, Any]:
    user_id = args.integer("user_id")
    try:
        token = accounts.issue_token(
            user_id, args.optional_string("label", max_length=MAX_NAME) or ""
        )
    except ValueError as error:
        raise _not_found(f"user {user_id}") from error
    return {"user_id": user_id, "token": token}


@op("revoke_token", "forget a bearer token; new connections with it are refused")
def _revoke_token(args: Args, context: CommandContext) -> dict[str, Any]:
    return {"revoked": accounts.revoke_token(args.string("token", max_length=512))}


@op("create_agent", "create an AI agent owned by a human (model claude-code: a channel agent)")
def _create_agent(args: Args, context: CommandContext) -> dict[str, Any]:
    owner_id = args.integer("owner_id")
    model = args.optional_string("model", max_length=MAX_NAME) or CHANNEL_AGENT_MODEL
    try:
        agent = accounts.create_agent(args.string("name", max_length=MAX_NAME), owner_id, model)
    except ValueError as error:
        raise CommandError("invalid_owner", str(error)) from error
    return {
        "agent_id": agent.user_id,
        "name": agent.name,
        "owner_id": owner_id,
        "model": model,
        "channel_agent": model == CHANNEL_AGENT_MODEL,
    }


@op("create_topic", "create a topic (session_id makes it private to one session of its agent)")
def _create_topic(args: Args, context: CommandContext) -> dict[str, Any]:
    owner_id = args.integer("owner_id")
    if accounts.get_user(owner_id) is None:
        raise _not_found(f"user {owner_id}")
    primary_agent_id = args.optional_integer("primary_agent_id")
    session_id = args.optional_string("session_id", max_length=128)
    if session_id and primary_agent_id is None:
        raise CommandError("invalid_command", "'session_id' needs 'primary_agent_id'")
    topic = accounts.create_topic(
        owner_id,
        args.optional_string("title", max_length=MAX_NAME) or "",
        primary_agent_id=primary_agent_id,
        session_id=session_id,
    )
    return {
        "topic_id": topic.topic_id,
        "owner_id": owner_id,
        "primary_agent_id": primary_agent_id,
        "session_id": session_id,
    }


@op("create_task", "create a task for an agent on a topic; start: true makes it running")
def _create_task(args: Args, context: CommandContext) -> dict[str, Any]:
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


@op("presence", "an agent's routing and leases, read consistently")
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


@op("list_tasks", "an agent's tasks, by status (all statuses unless one is given)")
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


@op(
    "unregister_agent",
    "close an agent for work: cancel its open tasks, close its sockets, archive its "
    "session topics (acting_user_id, when given, must own it); idempotent",
)
def _unregister_agent(args: Args, context: CommandContext) -> dict[str, Any]:
    services = unregister.Services(
        presence=context.presence(),
        tasks=context.tasks(),
        scheduler=context.scheduler(),
        events=context.events(),
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
        "unannounced": done.unannounced,
        "archived_topics": done.archived_topics,
        "withdrawn_schedules": done.withdrawn_schedules,
    }
