"""The operator's subcommands: each one becomes a backend command (see
operator_commands and commands), sent through a transport; the answer is printed
for a person, or as JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from agent_channel_dev.backend_transport import (
    BackendFunction,
    LambdaTransport,
    LocalTransport,
    Transport,
    TransportError,
    function_for,
)

DEFAULT_LOCAL_URL = "http://127.0.0.1:8765"
LOCAL_ENV = "AGENT_CHANNEL_LOCAL"
STACK_ENV = "AGENT_CHANNEL_STACK"

Builder = Callable[[argparse.Namespace], list[dict[str, Any]]]


def transport_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    where = parent.add_argument_group("where the backend is")
    where.add_argument(
        "--local",
        metavar="URL",
        help=f"the local stack (`agent-channel dev`); default ${LOCAL_ENV} or {DEFAULT_LOCAL_URL}",
    )
    where.add_argument(
        "--stack-name",
        help=f"a deployed stack: invoke its BackendFunction or AdminFunction; default ${STACK_ENV}",
    )
    where.add_argument("--region", help="the deployed stack's region")
    parent.add_argument("--json", action="store_true", help="print the answer as JSON")
    return parent


def transport_for(args: argparse.Namespace, function: BackendFunction) -> Transport:
    """Where ``function`` (the delivery or the admin backend) is reached."""
    if args.local:
        return LocalTransport(args.local, function)
    stack = args.stack_name or os.environ.get(STACK_ENV)
    if stack:
        return LambdaTransport(stack, args.region, function)
    return LocalTransport(os.environ.get(LOCAL_ENV) or DEFAULT_LOCAL_URL, function)


def _token_argument(value: str) -> str:
    # "-" reads the token from stdin, so it need not appear in the process list.
    return sys.stdin.readline().strip() if value == "-" else value


def add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parent = transport_options()

    def sub(name: str, summary: str, build: Builder) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=summary, description=summary, parents=[parent])
        parser.set_defaults(build=build)
        return parser

    p = sub("create-user", "create a human user", lambda a: [{"op": "create_user", "name": a.name}])
    p.add_argument("name")

    p = sub(
        "issue-token",
        "mint a bearer token for a user (printed once)",
        lambda a: [{"op": "issue_token", "user_id": a.user, "label": a.label}],
    )
    p.add_argument("--user", type=int, required=True)
    p.add_argument("--label", default="")

    p = sub(
        "revoke-token",
        "revoke a bearer token",
        lambda a: [{"op": "revoke_token", "token": _token_argument(a.token)}],
    )
    p.add_argument("--token", required=True, help="the token, or - to read it from stdin")

    p = sub(
        "create-agent",
        "create an AI agent owned by a user (a channel agent unless --model says otherwise)",
        lambda a: [{"op": "create_agent", "owner_id": a.owner, "name": a.name, "model": a.model}],
    )
    p.add_argument("--owner", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--model", default=None)

    p = sub(
        "create-topic",
        "create a topic (with --session, private to one session of its agent)",
        lambda a: [
            {
                "op": "create_topic",
                "owner_id": a.owner,
                "title": a.title,
                "primary_agent_id": a.agent,
                "session_id": a.session,
            }
        ],
    )
    p.add_argument("--owner", type=int, required=True)
    p.add_argument("--title", default="")
    p.add_argument("--agent", type=int, default=None, help="the topic's primary agent")
    p.add_argument("--session", default=None, help="session id of a session topic")

    p = sub("create-task", "create a task; --dispatch also starts it and hands it over", _task)
    p.add_argument("--topic", type=int, required=True)
    p.add_argument("--agent", type=int, required=True)
    p.add_argument("--content", required=True)
    p.add_argument("--author", type=int, default=None)
    p.add_argument("--start", action="store_true", help="make it running (holds a slot)")
    p.add_argument("--dispatch", action="store_true", help="start it and dispatch it")

    p = sub(
        "dispatch",
        "hand a running task to its channel agent",
        lambda a: [{"op": "dispatch", "task_id": a.task}],
    )
    p.add_argument("--task", type=int, required=True)

    p = sub(
        "decide",
        "record a permission decision (first wins) and push it to the agent",
        lambda a: [
            {
                "op": "decide_permission",
                "agent_id": a.agent,
                "request_id": a.request,
                "behavior": a.behavior,
                "decided_by": a.by,
                "reason": a.reason,
            }
        ],
    )
    p.add_argument("--agent", type=int, required=True)
    p.add_argument("--request", required=True, help="the permission request id")
    p.add_argument("--by", type=int, required=True, help="the deciding user")
    p.add_argument("--reason", default=None, help="why (sent to the agent with the decision)")
    behavior = p.add_mutually_exclusive_group(required=True)
    behavior.add_argument("--allow", dest="behavior", action="store_const", const="allow")
    behavior.add_argument("--deny", dest="behavior", action="store_const", const="deny")

    p = sub(
        "unregister-agent",
        "close an agent for work: cancel its open tasks, close its sockets, archive its "
        "session topics",
        lambda a: [
            {"op": "unregister_agent", "agent_id": a.agent, "acting_user_id": a.acting_user}
        ],
    )
    p.add_argument("--agent", type=int, required=True)
    p.add_argument(
        "--as-user",
        dest="acting_user",
        type=int,
        default=None,
        help="the acting user; refused unless they own the agent",
    )

    p = sub("broadcast", "send a JSON object to an agent's or a topic's stream", _broadcast)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--agent", type=int)
    target.add_argument("--topic", type=int)
    p.add_argument("--payload", required=True, help='a JSON object, e.g. \'{"type": "note"}\'')

    p = sub(
        "presence",
        "an agent's routing and sessions",
        lambda a: [{"op": "presence", "agent_id": a.agent}],
    )
    p.add_argument("--agent", type=int, required=True)

    p = sub(
        "tasks",
        "an agent's tasks",
        lambda a: [{"op": "list_tasks", "agent_id": a.agent, "status": a.status}],
    )
    p.add_argument("--agent", type=int, required=True)
    p.add_argument("--status", default=None)


def _task(args: argparse.Namespace) -> list[dict[str, Any]]:
    create = {
        "op": "create_task",
        "topic_id": args.topic,
        "agent_id": args.agent,
        "content": args.content,
        "author_id": args.author,
        "start": bool(args.start or args.dispatch),
    }
    # The dispatch command needs the new task's id: filled in from the first answer.
    return [create, {"op": "dispatch"}] if args.dispatch else [create]


def _broadcast(args: argparse.Namespace) -> list[dict[str, Any]]:
    try:
        payload = json.loads(args.payload)
    except ValueError as error:
        raise SystemExit(f"--payload is not JSON: {error}") from error
    return [{"op": "broadcast", "agent_id": args.agent, "topic_id": args.topic, "payload": payload}]


def _without_nulls(command: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in command.items() if value is not None}


def run_operator(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    commands: list[dict[str, Any]] = args.build(args)
    answers: list[dict[str, Any]] = []
    for command in commands:
        if command["op"] == "dispatch" and "task_id" not in command and answers:
            command = {**command, "task_id": answers[-1].get("task_id")}
        # Accounts and tokens go to the admin function, the rest to the delivery one.
        transport = transport_for(args, function_for(command["op"]))
        try:
            answer = transport.call(_without_nulls(command))
        except TransportError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        answers.append(answer)
        if not answer.get("ok", False):
            break
    if args.json:
        print(json.dumps(answers[0] if len(answers) == 1 else answers, indent=2), file=out)
    else:
        for answer in answers:
            print(describe(answer), file=out)
    return 0 if all(answer.get("ok", False) for answer in answers) else 1


def describe(answer: dict[str, Any]) -> str:
    """One answer, for a person."""
    if not answer.get("ok", False):
        return f"refused: {answer.get('error', 'error')}: {answer.get('message', '')}"
    op = answer.get("op")
    if op == "presence":
        return _describe_presence(answer)
    if op == "list_tasks":
        return _describe_tasks(answer)
    if op == "issue_token":
        return (
            f"token for user {answer['user_id']} (shown once, store it now):\n  {answer['token']}"
        )
    if op == "decide_permission":
        return (
            f"decision {answer['request_id']}: {answer['behavior']} (agent {answer['agent_id']}), "
            f"pushed to {len(answer.get('delivered') or [])} connection(s)"
        )
    if op == "broadcast":
        return (
            f"{answer.get('stream')}: delivered {len(answer.get('delivered') or [])}, "
            f"gone {len(answer.get('gone') or [])}, failed {len(answer.get('failed') or [])}"
        )
    if op in ("create_task", "dispatch"):
        return f"task {answer.get('task_id')}: {answer.get('status')}" + _deliveries(answer)
    shown = {k: v for k, v in answer.items() if k not in ("ok", "op")}
    return f"{op}: " + ", ".join(f"{k}={_short(v)}" for k, v in shown.items())


def _deliveries(answer: dict[str, Any]) -> str:
    agent = answer.get("agent_stream")
    if not isinstance(agent, dict):
        return ""
    return f" (delivered to {len(agent.get('delivered') or [])} agent connection(s))"


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe_presence(answer: dict[str, Any]) -> str:
    state = "on" if answer["routing"] else "off"
    lines = [
        f"agent {answer['agent_id']}: routing {state}, {answer['live_sessions']} live lease(s)"
    ]
    for lease in answer["leases"]:
        liveness = "live" if lease["live"] else "stale"
        lines.append(
            f"  {lease['connection_id']}  session {lease['session_id'] or '-'}  "
            f"seen {lease['last_seen_seconds_ago']}s ago  {liveness}"
        )
    return "\n".join(lines)


def _describe_tasks(answer: dict[str, Any]) -> str:
    tasks = answer["tasks"]
    if not tasks:
        return f"agent {answer['agent_id']}: no tasks"
    lines = [f"agent {answer['agent_id']}: {len(tasks)} task(s)"]
    for task in tasks:
        lines.append(
            f"  task {task['task_id']:<6} topic {task['topic_id']:<6} {task['status']:<10} "
            f"{_short(task['content'])}"
        )
    return "\n".join(lines)
