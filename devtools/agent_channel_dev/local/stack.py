"""The running pieces of the local stack, wired together: resources in moto, the
functions, the gateway with its @connections API and backend endpoint, and the
scheduler loop. The environment must already point at the local stack."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

import boto3
from aiohttp import web

from agent_channel.observability import logger
from agent_channel_dev.local import demo, faults, resources
from agent_channel_dev.local.backend_endpoint import BACKEND_FOLDER, mount_backend
from agent_channel_dev.local.connections_api import add_connection_routes
from agent_channel_dev.local.demo import DemoAccounts
from agent_channel_dev.local.environment import CANCEL_OFFLINE_FUNCTION
from agent_channel_dev.local.functions import FunctionRunner
from agent_channel_dev.local.gateway import Gateway
from agent_channel_dev.local.scheduler_loop import SWEEPER_FOLDER, SchedulerLoop, sweep_interval

CLEANUP_SECONDS = 5.0


@dataclass
class LocalStack:
    demo: DemoAccounts
    gateway: Gateway
    scheduler: SchedulerLoop
    app: web.Application
    _runner: web.AppRunner | None = None
    _stop_scheduler: asyncio.Event = field(default_factory=asyncio.Event)
    _scheduler_task: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls,
        *,
        stage: str,
        table_name: str,
        schedule_group: str,
        event_bus: str,
        ping_seconds: float,
        stale_after_seconds: int,
    ) -> LocalStack:
        """Create the table, schedule group and bus in moto, seed the demo accounts
        and import every function (blocking: call it in a worker thread)."""
        resources.create_table(boto3.client("dynamodb"), table_name)
        resources.create_schedule_group(boto3.client("scheduler"), schedule_group)
        if event_bus != "default":
            boto3.client("events").create_event_bus(Name=event_bus)
        layout = resources.layout()
        runner = FunctionRunner()
        # Import every function now: a broken one fails the start, not a request.
        wanted = {*layout.routes.values(), layout.authorizer, SWEEPER_FOLDER}
        wanted |= {CANCEL_OFFLINE_FUNCTION, BACKEND_FOLDER}
        for folder in sorted(wanted):
            if runner.exists(folder):
                runner.module(folder)
            else:
                logger.warning("function not built yet", extra={"function": folder})
        seeded = demo.seed()
        gateway = Gateway(
            runner,
            layout,
            stage=stage,
            ping_seconds=ping_seconds,
            faults=faults.from_environment(),
        )
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
        return cls(seeded, gateway, scheduler, app)

    async def start(self, sock: socket.socket) -> None:
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=CLEANUP_SECONDS
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock, shutdown_timeout=CLEANUP_SECONDS).start()
        self._scheduler_task = asyncio.create_task(self.scheduler.run(self._stop_scheduler))

    async def stop(self) -> None:
        self._stop_scheduler.set()
        if self._scheduler_task is not None:
            with contextlib.suppress(Exception):
                await self._scheduler_task
        if self._runner is not None:
            # Closes every socket; each one's $disconnect runs before this returns.
            await self._runner.cleanup()
