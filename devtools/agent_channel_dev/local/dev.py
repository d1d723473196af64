"""``agent-channel dev``: the whole stack in one process, on a laptop.

An embedded moto server holds DynamoDB, Scheduler and EventBridge; an aiohttp
server on one port is the WebSocket gateway, the ``@connections`` API and the
backend command endpoint; a loop fires due schedules and the sweeper. The
functions are the unchanged ``functions/*/app.py``, called in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from agent_channel_dev.local.environment import Constants, LocalEndpoints, apply, local_environment

if TYPE_CHECKING:
    from agent_channel_dev.local.demo import DemoAccounts
    from agent_channel_dev.local.moto_server import MotoServer

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_STAGE = "local"
DEFAULT_TABLE = "agent-channel"
DEFAULT_SCHEDULE_GROUP = "agent-channel"
DEFAULT_EVENT_BUS = "agent-channel"
WORKER_THREADS = 64
"""Handlers block on HTTP calls (some to this very server): plenty of threads."""
STOP_TIMEOUT_SECONDS = 10.0
READY_PREFIX = "READY"


@dataclass(frozen=True)
class DevOptions:
    port: int = DEFAULT_PORT
    stage: str = DEFAULT_STAGE
    heartbeat_seconds: int = 30
    stale_after_seconds: int = 45
    grace_seconds: int = 30
    log_level: str = "WARNING"

    @property
    def constants(self) -> Constants:
        return Constants(self.heartbeat_seconds, self.stale_after_seconds, self.grace_seconds)


def ping_seconds(stale_after_seconds: int) -> float:
    """How often the gateway pings a quiet socket.

    Later than staleness on purpose: a plugin frozen with its TCP connection open
    must be reaped by staleness and the sweeper (as on AWS, where nothing pings),
    and only afterwards does the gateway drop the socket and send $disconnect.
    """
    return float(max(2 * stale_after_seconds, 4))


def bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def banner(options: DevOptions, port: int, moto_url: str, demo: DemoAccounts) -> str:
    ws_url = f"ws://{HOST}:{port}/{options.stage}"
    http_url = f"http://{HOST}:{port}"
    connect = f"{ws_url}?agent_id={demo.agent_id}&session_id=demo&token={demo.token}"
    lines = [
        "agent-channel local stack",
        f"  websocket     {ws_url}",
        f"  @connections  {http_url}/{options.stage}/@connections/{{connection_id}}",
        f"  backend       {http_url}/_backend",
        f"  moto          {moto_url}",
        f"  constants     heartbeat {options.heartbeat_seconds}s, "
        f"stale after {options.stale_after_seconds}s, grace {options.grace_seconds}s",
        "",
        "demo accounts (the token is shown only here, once):",
        f"  owner  user {demo.owner_id}",
        f"  token  {demo.token}",
        f"  agent  {demo.agent_id} (channel agent)",
        f"  topic  {demo.topic_id}",
        "",
        "connect the reference agent client:",
        f"  agent-channel agent --url {ws_url} --agent-id {demo.agent_id} "
        f"--session-id demo --token {demo.token}",
        "or any WebSocket client:",
        f"  websocat '{connect}'",
        "then, in another shell (in a checkout: source .venv/bin/activate first):",
        f"  export AGENT_CHANNEL_LOCAL={http_url}",
        f"  agent-channel create-task --topic {demo.topic_id} --agent {demo.agent_id} "
        '--content "hello" --dispatch',
        f"  agent-channel presence --agent {demo.agent_id}",
        f"  agent-channel tasks --agent {demo.agent_id}",
        "  agent-channel --help",
        "",
        "Ctrl-C stops it.",
    ]
    return "\n".join(lines)


def ready_line(options: DevOptions, port: int, demo: DemoAccounts) -> str:
    """One machine-readable line for scripts and tests (no secret in it)."""
    details = {
        "backend": f"http://{HOST}:{port}",
        "owner_id": demo.owner_id,
        "agent_id": demo.agent_id,
        "topic_id": demo.topic_id,
    }
    return f"{READY_PREFIX} ws://{HOST}:{port}/{options.stage} {json.dumps(details)}"


def _quiet_libraries() -> None:
    # moto's werkzeug server logs every request; the banner must stay readable.
    for name in ("werkzeug", "moto", "botocore", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Metrics are off locally (no CloudWatch); Powertools still warns on each flush.
    warnings.filterwarnings("ignore", message="No application metrics to publish")


def run(options: DevOptions, out: TextIO = sys.stdout) -> int:
    try:
        sock = bind(options.port)
    except OSError as error:
        print(f"cannot listen on {HOST}:{options.port}: {error.strerror}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(options, sock, out))


async def _serve(options: DevOptions, sock: socket.socket, out: TextIO) -> int:
    from agent_channel_dev.local.moto_server import MotoServer

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="lambda"))
    _quiet_libraries()
    moto = MotoServer(HOST)
    moto.start()
    try:
        return await _serve_with_moto(options, sock, out, moto)
    finally:
        moto.stop()


async def _serve_with_moto(
    options: DevOptions, sock: socket.socket, out: TextIO, moto: MotoServer
) -> int:
    moto_url = moto.url
    port = int(sock.getsockname()[1])

    # Imported only from here on: the stack reads settings, once, at import.
    from agent_channel_dev.local import resources

    schedule_group = resources.schedule_group_name(DEFAULT_SCHEDULE_GROUP)
    apply(
        local_environment(
            LocalEndpoints(moto_url, f"http://{HOST}:{port}/{options.stage}"),
            options.constants,
            table_name=DEFAULT_TABLE,
            schedule_group=schedule_group,
            event_bus=DEFAULT_EVENT_BUS,
            log_level=options.log_level,
        )
    )
    from agent_channel_dev.local.stack import LocalStack

    stack = await asyncio.to_thread(
        LocalStack.build,
        stage=options.stage,
        table_name=DEFAULT_TABLE,
        schedule_group=schedule_group,
        event_bus=DEFAULT_EVENT_BUS,
        ping_seconds=ping_seconds(options.stale_after_seconds),
        stale_after_seconds=options.stale_after_seconds,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stack.start(sock)
    try:
        print(banner(options, port, moto_url, stack.demo), file=out)
        print(ready_line(options, port, stack.demo), file=out, flush=True)
        await stop.wait()
        print("stopping", file=out, flush=True)
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stack.stop(), STOP_TIMEOUT_SECONDS)
    return 0
