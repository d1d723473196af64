"""``agent-channel agent``: the reference client as a process, printing what arrives.

It is what an MCP plugin embeds (see agent_channel.client); run on its own it
shows the wire protocol at work against the local stack or a deployed one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any, TextIO

from agent_channel_dev.client import AgentClient, Backoff, ClientConfig, ConnectRefused

DEFAULT_URL = "ws://127.0.0.1:8765/local"
URL_ENV = "AGENT_CHANNEL_URL"
TOKEN_ENV = "AGENT_CHANNEL_TOKEN"  # noqa: S105  (the variable's name, not a token)


def add_agent_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "connect as one session of a channel agent and print what arrives"
    p = commands.add_parser("agent", help=summary, description=summary)
    p.add_argument("--agent-id", type=int, required=True)
    p.add_argument("--session-id", default="", help="this plugin's own, stable session id")
    p.add_argument("--url", default=None, help=f"default ${URL_ENV} or {DEFAULT_URL}")
    p.add_argument(
        "--token",
        default=None,
        help=f"the owner's bearer token; default ${TOKEN_ENV} (safer: not in the process list)",
    )
    p.add_argument("--token-in-query", action="store_true", help="send ?token= (no header)")
    p.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=float(os.environ.get("HEARTBEAT_SECONDS") or 30),
    )
    p.add_argument("--backoff-seconds", type=float, default=1.0, help="first reconnect delay")
    p.add_argument(
        "--pending",
        default="",
        help="comma-separated permission request ids this session waits on (replayed on connect)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=run_agent)


def _printer(out: TextIO, as_json: bool, label: str) -> Any:
    def show(message: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(message), file=out, flush=True)
            return
        if label == "dispatch":
            comment = message.get("comment") or {}
            print(
                f"dispatch: task {message.get('task_id')} "
                f"(session topic {message.get('session_topic') or '-'}): {comment.get('content')}",
                file=out,
                flush=True,
            )
        elif label == "decision":
            print(
                f"decision: {message.get('request_id')} -> {message.get('behavior')}",
                file=out,
                flush=True,
            )
        else:
            print(f"error: {message.get('error')}: {message.get('message')}", file=out, flush=True)

    return show


def run_agent(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        print(f"error: give --token or set {TOKEN_ENV}", file=sys.stderr)
        return 2
    config = ClientConfig(
        url=args.url or os.environ.get(URL_ENV) or DEFAULT_URL,
        token=token,
        agent_id=args.agent_id,
        session_id=args.session_id,
        heartbeat_seconds=args.heartbeat_seconds,
        backoff=Backoff(first=args.backoff_seconds),
        token_in_query=args.token_in_query,
    )

    def state(text: str) -> None:
        print(f"[{args.session_id or 'agent'}] {text}", file=sys.stderr, flush=True)

    client = AgentClient(
        config,
        on_dispatch=_printer(out, args.json, "dispatch"),
        on_decision=_printer(out, args.json, "decision"),
        on_error=_printer(out, args.json, "error"),
        on_state=state,
    )
    for request_id in filter(None, (part.strip() for part in args.pending.split(","))):
        client.hold(request_id)
    return asyncio.run(_run(client))


async def _run(client: AgentClient) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await client.run(stop)
    except ConnectRefused as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    return 0
