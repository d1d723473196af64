"""The running pieces of the local stack, wired together: resources in moto, the
functions, the gateway with its @connections API and backend endpoint, the
scheduler loop and the task-event pipe. The environment must already point at the local stack."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

import boto3
from aiohttp import web

from agent_channel.observability import logger
from agent_channel_dev.local import demo, resources, stack_template
from agent_channel_dev.local.backend_endpoint import ADMIN_FOLDER, BACKEND_FOLDER, mount_backend
from agent_channel_dev.local.connections_api import add_connection_routes
from agent_channel_dev.local.demo import DemoAccounts
from agent_channel_dev.local.environment import CANCEL_OFFLINE_FUNCTION
from agent_channel_dev.local.functions import FunctionRunner
from agent_channel_dev.local.gateway import Gateway
from agent_channel_dev.local.pipe import LocalPipe, PipeDefinition
from agent_channel_dev.local.scheduler_loop import SWEEPER_FOLDER, SchedulerLoop, sweep_interval

CLEANUP_SECONDS = 5.0
PIPE_POLL_SECONDS = 0.25
"""How often the local task-event pipe reads the stream (a pipe polls about 4 times a second)."""


@dataclass
class LocalStack:
    demo: DemoAccounts
    gateway: Gateway
    scheduler: SchedulerLoop
    app: web.Application
    pipe: LocalPipe
    _runner: web.AppRunner | None = None
    _stop_scheduler: asyncio.Event = field(default_factory=asyncio.Event)
    _scheduler_task: asyncio.Task[None] | None = None
    _pipe_task: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls,
        *,
        stage: str,
        table_name: str,
        idempotency_table: str,
        schedule_group: str,
        event_bus: str,
        ping_seconds: float,
        stale_after_seconds: int,
    ) -> LocalStack:
        """Create the table, schedule group and bus in moto, seed the demo accounts
        and import every function (blocking: call it in a worker thread)."""
        resources.create_table(boto3.client("dynamodb"), table_name)
        resources.create_table(
            boto3.client("dynamodb"), idempotency_table, stack_template.IDEMPOTENCY_TABLE
        )
        resources.create_schedule_group(boto3.client("scheduler"), schedule_group)
        if event_bus != "default":
            boto3.client("events").create_event_bus(Name=event_bus)
        layout = resources.layout()
        runner = FunctionRunner()
        # Import every function now: a broken one fails the start, not a request.
        wanted = {*layout.routes.values(), layout.authorizer, SWEEPER_FOLDER}
        wanted |= {CANCEL_OFFLINE_FUNCTION, BACKEND_FOLDER, ADMIN_FOLDER}
        for folder in sorted(wanted):
            if runner.exists(folder):
                runner.module(folder)
            else:
                logger.warning("function not built yet", extra={"function": folder})
        seeded = demo.seed()
        gateway = Gateway(runner, layout, stage=stage, ping_seconds=ping_seconds)
        scheduler = SchedulerLoop(
            boto3.client("scheduler"),
            runner,
            group=schedule_group,
            sweep_seconds=sweep_interval(stale_after_seconds),
        )
        app = web.Application()
        gateway.mount(app)
        add_connection_routes(app, gateway, stage=stage)
        mount_backend(app, runner)
        pipe = LocalPipe(PipeDefinition.from_template(), table_name, event_bus)
        return cls(seeded, gateway, scheduler, app, pipe)

    async def start(self, sock: socket.socket) -> None:
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=CLEANUP_SECONDS
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock, shutdown_timeout=CLEANUP_SECONDS).start()
        self._scheduler_task = asyncio.create_task(self.scheduler.run(self._stop_scheduler))
        self._pipe_task = asyncio.create_task(self._run_pipe(self._stop_scheduler))

    async def _run_pipe(self, stop: asyncio.Event) -> None:
        """The task-event pipe: table stream -> bus, as TaskEventPipe does on AWS."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.pipe.pump)
            except Exception:
                # As a pipe does: the records stay on the stream for the next poll.
                logger.warning("task-event pipe poll failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PIPE_POLL_SECONDS)

    async def stop(self) -> None:
        self._stop_scheduler.set()
        for task in (self._scheduler_task, self._pipe_task):
            if task is not None:
                with contextlib.suppress(Exception):
                    await task
        if self._runner is not None:
            # Closes every socket; each one's $disconnect runs before this returns.
            await self._runner.cleanup()
