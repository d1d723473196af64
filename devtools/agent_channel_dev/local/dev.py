"""``agent-channel dev``: a SAM WebSocket app served locally, from its template.

A moto server, in a process of its own, holds the tables, queues, buses and
schedule groups the template declares; an aiohttp server on one port is the
WebSocket gateway and the ``@connections`` API; each function runs in warm worker
processes of its own with exactly its template environment; a loop fires due
schedules and rate schedules. Without ``--template`` it serves this project's own template.yaml,
plus the demo accounts and the ``/_backend`` command endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent_channel_dev.local import backend_secret
from agent_channel_dev.local.backend_secret import SECRET_ENV
from agent_channel_dev.local.data_dir import data_dir, ensure_private_dir
from agent_channel_dev.local.gateway import (
    GOING_AWAY,
    IDLE_TIMEOUT_SECONDS,
    MAX_CONNECTION_SECONDS,
    GatewayOptions,
)
from agent_channel_dev.local.intrinsics import REGION

if TYPE_CHECKING:
    from agent_channel_dev.local.backend_endpoint import BackendGuard
    from agent_channel_dev.local.demo import DemoAccounts
    from agent_channel_dev.local.moto_process import MotoProcess
    from agent_channel_dev.local.sam_app import SamApp
    from agent_channel_dev.local.stack import LocalStack

PROJECT_TEMPLATE = Path(__file__).resolve().parents[3] / "template.yaml"

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_STAGE = "local"
DEFAULT_STACK_NAME = "agent-channel"
WORKER_THREADS = 64
"""Threads that wait on worker processes' answers (one per running invocation)."""
STOP_TIMEOUT_SECONDS = 10.0
READY_PREFIX = "READY"


@dataclass(frozen=True)
class DevOptions:
    port: int = DEFAULT_PORT
    stage: str | None = None
    """None: ``local`` for this project, the template's own for another app."""
    template: Path | None = None
    """None: this project's template.yaml, with demo accounts and /_backend."""
    parameters: dict[str, str] = field(default_factory=dict)
    """Template parameter overrides; they win over the flags below."""
    stack_name: str = DEFAULT_STACK_NAME
    heartbeat_seconds: int = 30
    stale_after_seconds: int = 45
    grace_seconds: int = 30
    log_level: str = "WARNING"
    idle_timeout_seconds: float = IDLE_TIMEOUT_SECONDS
    max_connection_seconds: float = MAX_CONNECTION_SECONDS
    ordered_frames: bool = False
    delete_close_code: int = GOING_AWAY
    max_concurrency: int = 8
    provisioned: dict[str, int] = field(default_factory=dict)
    """Workers started before the stack serves, by function logical id (one for any
    other): provisioned concurrency, up to ``max_concurrency``."""
    data_dir: str | None = None
    """Where state and the backend secret live (None: $AGENT_CHANNEL_DATA_DIR or the default)."""
    fresh: bool = False
    """Forget the kept state and start from new demo accounts."""

    @property
    def template_path(self) -> Path:
        return self.template or PROJECT_TEMPLATE

    def template_parameters(self, declared: dict[str, Any]) -> dict[str, str]:
        """The flags, for the template parameters of those names it declares."""
        from_flags = {
            "HeartbeatSeconds": str(self.heartbeat_seconds),
            "StaleAfterSeconds": str(self.stale_after_seconds),
            "GraceSeconds": str(self.grace_seconds),
            "LogLevel": self.log_level,
        }
        chosen = {name: value for name, value in from_flags.items() if name in declared}
        chosen.update(self.parameters)
        return chosen

    def gateway_options(self) -> GatewayOptions:
        return GatewayOptions(
            idle_timeout_seconds=self.idle_timeout_seconds,
            max_connection_seconds=self.max_connection_seconds,
            ordered_frames=self.ordered_frames,
            delete_close_code=self.delete_close_code,
        )


def bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def app_banner(app: SamApp, port: int, moto_url: str) -> str:
    ws_url = f"ws://{HOST}:{port}/{app.api.stage}"
    lines = [
        f"local stack of {app.path}",
        f"  websocket     {ws_url}",
        f"  @connections  http://{HOST}:{port}/{app.api.stage}/@connections/{{connection_id}}",
        f"  moto          {moto_url}",
        f"  routes        {', '.join(sorted(app.api.routes))}",
        "",
        "Ctrl-C stops it.",
    ]
    return "\n".join(lines)


def banner(
    stage: str,
    options: DevOptions,
    port: int,
    moto_url: str,
    demo: DemoAccounts,
    secret: str,
    secret_path: Path,
) -> str:
    ws_url = f"ws://{HOST}:{port}/{stage}"
    http_url = f"http://{HOST}:{port}"
    connect = f"{ws_url}?agent_id={demo.agent_id}&session_id=demo&token={demo.token}"
    lines = [
        "agent-channel local stack",
        f"  websocket     {ws_url}",
        f"  @connections  {http_url}/{stage}/@connections/{{connection_id}}",
        f"  backend       {http_url}/_backend",
        f"  admin         {http_url}/_admin",
        f"  moto          {moto_url}",
        f"  constants     heartbeat {options.heartbeat_seconds}s, "
        f"stale after {options.stale_after_seconds}s, grace {options.grace_seconds}s",
        "",
        "demo accounts (kept in the data directory with the rest of the state;",
        "the token stays valid across restarts, --fresh starts over):",
        f"  owner  user {demo.owner_id}",
        f"  token  {demo.token}",
        f"  agent  {demo.agent_id} (channel agent)",
        f"  topic  {demo.topic_id}",
        "",
        "backend secret for POST /_backend (minted on every start, shown only here;",
        f"the command line reads it from ${SECRET_ENV} or from {secret_path}):",
        f"  secret {secret}",
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


def ready_line(
    stage: str,
    port: int,
    moto_url: str,
    demo: DemoAccounts | None,
    secret_path: Path | None = None,
) -> str:
    """One machine-readable line for scripts and tests (no secret in it: only where
    the owner-only secret file is)."""
    details: dict[str, Any] = {"moto": moto_url}
    if demo is not None:
        details.update(
            backend=f"http://{HOST}:{port}",
            secret_file=str(secret_path),
            owner_id=demo.owner_id,
            agent_id=demo.agent_id,
            topic_id=demo.topic_id,
        )
    return f"{READY_PREFIX} ws://{HOST}:{port}/{stage} {json.dumps(details)}"


def _quiet_libraries() -> None:
    # moto's werkzeug server logs every request; the banner must stay readable.
    for name in ("werkzeug", "moto", "botocore", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="No application metrics to publish")


def _point_at_moto(moto_url: str, extra: dict[str, str] | None = None) -> None:
    """This process's own AWS calls (creating resources, seeding) go to moto; a
    developer's AWS profile or session must never leak into the local stack."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            **(extra or {}),
        }
    )


def load_app(options: DevOptions) -> SamApp:
    """The app to serve, read from its template; TemplateError or OSError if it
    cannot be served (the reason is in the message)."""
    from agent_channel_dev.local import sam_app
    from agent_channel_dev.local.stack_template import load_template_text

    path = options.template_path
    project = options.template is None
    declared = load_template_text(path.read_text(encoding="utf-8")).get("Parameters") or {}
    return sam_app.load(
        path,
        stack_name=options.stack_name,
        parameters=options.template_parameters(declared),
        stage=options.stage or (DEFAULT_STAGE if project else None),
    )


def run(options: DevOptions, out: TextIO = sys.stdout) -> int:
    from agent_channel_dev.local.stack_template import TemplateError

    try:
        app = load_app(options)
    except (TemplateError, OSError, ValueError) as error:
        print(f"cannot serve {options.template_path}: {error}", file=sys.stderr)
        return 2
    try:
        sock = bind(options.port)
    except OSError as error:
        print(f"cannot listen on {HOST}:{options.port}: {error.strerror}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(options, app, sock, out))


async def _serve(options: DevOptions, app: SamApp, sock: socket.socket, out: TextIO) -> int:
    from agent_channel_dev.local.moto_process import MotoProcess, MotoProcessError

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="invoke"))
    _quiet_libraries()
    moto = MotoProcess(HOST)
    try:
        await asyncio.to_thread(moto.start)
    except MotoProcessError as error:
        print(f"cannot start moto: {error}", file=sys.stderr)
        return 1
    try:
        return await _serve_with_moto(options, app, sock, out, moto)
    finally:
        moto.stop()


async def _serve_with_moto(
    options: DevOptions, app: SamApp, sock: socket.socket, out: TextIO, moto: MotoProcess
) -> int:
    from agent_channel_dev.local.stack import LocalStack, create_resources
    from agent_channel_dev.local.workers import FunctionError

    moto_url = moto.url
    port = int(sock.getsockname()[1])
    project = options.template is None
    _point_at_moto(moto_url)
    from agent_channel_dev.local.backend_endpoint import BackendGuard
    from agent_channel_dev.local.persistence import LocalState

    directory = ensure_private_dir(data_dir(options.data_dir))
    state = LocalState(directory)
    if options.fresh:
        state.forget()
    restored: DemoAccounts | None = None
    if project and state.exists():
        replayed = await asyncio.to_thread(state.replay, moto_url)
        restored = state.load_demo()
        print(f"restored the state kept in {directory} ({replayed} requests)", file=out)
    if project:
        state.record(moto.record)
    if restored is None:
        await asyncio.to_thread(create_resources, app)
    secret = backend_secret.mint(directory)
    secret_path = backend_secret.secret_file(directory)
    stack = LocalStack.build(
        app,
        moto_url=moto_url,
        local_origin=f"http://{HOST}:{port}",
        options=options.gateway_options(),
        # A shortened staleness needs the sweeper more often than every minute.
        rate_seconds=sweep_interval(options.stale_after_seconds) if project else None,
        max_concurrency=options.max_concurrency,
        provisioned=options.provisioned,
    )
    demo = (
        await asyncio.to_thread(
            _project_extras, app, stack, BackendGuard(secret, port), restored, moto
        )
        if project
        else None
    )
    if project and restored is None and demo is not None:
        state.save_demo(demo)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stack.start(sock)
    except FunctionError as error:
        # A function that cannot even start fails the launch, with Lambda's report.
        stack.functions.close()
        print(f"a function failed to start: {json.dumps(error.payload)}", file=sys.stderr)
        return 1
    # What is built by now (moto's and botocore's models, the template, the
    # gateway) lives as long as the process: frozen out of the collector's way,
    # a full collection scans only what requests made, not hundreds of thousands
    # of objects that never die, while every request waits for it.
    gc.freeze()
    try:
        if demo is not None:
            print(
                banner(app.api.stage, options, port, moto_url, demo, secret, secret_path), file=out
            )
        else:
            print(app_banner(app, port, moto_url), file=out)
        print(ready_line(app.api.stage, port, moto_url, demo, secret_path), file=out, flush=True)
        await stop.wait()
        print("stopping", file=out, flush=True)
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stack.stop(), STOP_TIMEOUT_SECONDS)
    return 0


def sweep_interval(stale_after_seconds: int) -> float | None:
    """The template's rate as deployed; every few seconds when staleness is
    shortened for a demo or a test, so a crashed plugin is still reaped within a
    few heartbeats."""
    if stale_after_seconds >= 45:
        return None
    return float(max(1, stale_after_seconds // 2))


def _project_extras(
    app: SamApp,
    stack: LocalStack,
    guard: BackendGuard,
    restored: DemoAccounts | None,
    moto: MotoProcess,
) -> DemoAccounts:
    """This project's own additions: the /_backend and /_admin endpoints (the
    BackendFunction and the AdminFunction, invoked directly, behind the per-run
    secret), the task-event pipe and demo accounts seeded in its table, unless they
    were restored with the kept state (blocking)."""
    from agent_channel_dev.local.backend_endpoint import (
        ADMIN_FOLDER,
        ADMIN_PATH,
        BACKEND_FOLDER,
        PATH,
        mount_backend,
    )
    from agent_channel_dev.local.pipe import LocalPipe, PipeDefinition, run_in_background

    for folder, path in ((BACKEND_FOLDER, PATH), (ADMIN_FOLDER, ADMIN_PATH)):
        spec = app.function_by_code_folder(folder)
        if spec is None:
            raise RuntimeError(f"the project template has no {folder} function")

        async def invoke(command: Any, logical_id: str = spec.logical_id) -> Any:
            return await stack.functions.invoke(logical_id, command)

        mount_backend(stack.web_app, invoke, guard, path)
    backend = app.function_by_code_folder(BACKEND_FOLDER)
    if backend is None:
        raise RuntimeError("the project template has no backend function")
    # Seeded from this process: it needs the table the functions use.
    _point_at_moto(
        os.environ["AWS_ENDPOINT_URL"], {"TABLE_NAME": backend.environment["TABLE_NAME"]}
    )
    from agent_channel_dev.local import demo

    # The task-event pipe, from its definition in the template, on moto's stream;
    # what it has handled is trimmed from the stream (why: MotoServer.trim_stream,
    # in moto's process), and stream iterators expire as on AWS (MotoServer.upkeep).
    table_name = backend.environment["TABLE_NAME"]
    run_in_background(
        LocalPipe(PipeDefinition.from_template(), table_name, app.event_buses[0]),
        trim=lambda sequence_number: moto.trim_stream(table_name, sequence_number),
        upkeep=moto.upkeep,
    )
    if restored is not None:
        return restored
    return demo.seed()
