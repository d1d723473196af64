"""The running pieces of a local stack for one SAM WebSocket app, wired together:
its resources in moto, its functions in worker processes, the gateway with its
signed ``@connections`` API, and the scheduler loop. Everything is read from the
app's template (``sam_app``); nothing here knows agent-channel."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

import boto3
from aiohttp import web

from agent_channel_dev.local import faults, sigv4
from agent_channel_dev.local.connections_api import Signing, add_connection_routes
from agent_channel_dev.local.gateway import Gateway, GatewayOptions
from agent_channel_dev.local.sam_app import SamApp
from agent_channel_dev.local.scheduler_loop import SchedulerLoop
from agent_channel_dev.local.workers import Functions, lambda_environment

CLEANUP_SECONDS = 5.0
OPERATOR_KEY = ("local", "local")
"""Credentials a developer's own boto3 client signs ``@connections`` calls with;
allowed everything, as an administrator's would be."""


def create_resources(app: SamApp) -> None:
    """Every table, queue, event bus and schedule group the template declares, in
    the moto that ``AWS_ENDPOINT_URL`` points at (blocking)."""
    dynamodb = boto3.client("dynamodb")
    for table in app.tables:
        dynamodb.create_table(**table.create_kwargs)
        if table.ttl_attribute:
            dynamodb.update_time_to_live(
                TableName=table.create_kwargs["TableName"],
                TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute},
            )
    for queue in app.queues:
        boto3.client("sqs").create_queue(QueueName=queue)
    for bus in app.event_buses:
        boto3.client("events").create_event_bus(Name=bus)
    for group in app.schedule_groups:
        boto3.client("scheduler").create_schedule_group(Name=group)


@dataclass
class LocalStack:
    app: SamApp
    functions: Functions
    gateway: Gateway
    scheduler: SchedulerLoop
    web_app: web.Application
    _runner: web.AppRunner | None = None
    _stop_scheduler: asyncio.Event = field(default_factory=asyncio.Event)
    _scheduler_task: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls,
        app: SamApp,
        *,
        moto_url: str,
        local_origin: str,
        options: GatewayOptions,
        rate_seconds: float | None = None,
        max_concurrency: int = 8,
        provisioned: dict[str, int] | None = None,
    ) -> LocalStack:
        """Wire the stack (the resources must exist already)."""
        keys = {
            logical_id: (f"AKIALOCAL{index:011d}", secrets.token_hex(20))
            for index, logical_id in enumerate(sorted(app.functions))
        }
        principals = {OPERATOR_KEY[0]: sigv4.Principal(OPERATOR_KEY[1], None)}
        for logical_id, (key, secret) in keys.items():
            principals[key] = sigv4.Principal(secret, app.functions[logical_id].statements)
        functions = Functions(
            app,
            environment=lambda spec: lambda_environment(
                spec,
                endpoint_url=moto_url,
                access_key=keys[spec.logical_id],
                api_endpoint=(app.api.domain_name, local_origin),
            ),
            local_origin=local_origin,
            max_concurrency=max_concurrency,
            provisioned=provisioned,
        )
        # What the API's AWS service integrations call: the stack's moto, with the
        # gateway's own credentials (each integration's role is checked on the way).
        services = boto3.client("dynamodb", endpoint_url=moto_url)
        gateway = Gateway(app.api, functions, options, faults.from_environment(), services)

        async def invoke_target(name: str, event: Any) -> Any:
            return await functions.invoke(app.function_by_name(name).logical_id, event)

        scheduler = SchedulerLoop(
            boto3.client("scheduler"),
            invoke_target,
            groups=list(app.schedule_groups),
            rates={
                spec.logical_id: rate_seconds or spec.rate_seconds
                for spec in app.functions.values()
                if spec.rate_seconds
            },
        )
        web_app = web.Application()
        gateway.mount(web_app)
        add_connection_routes(
            web_app,
            gateway,
            stage=app.api.stage,
            signing=Signing(principals, app.api.api_id),
        )
        return cls(app, functions, gateway, scheduler, web_app)

    async def start(self, sock: socket.socket) -> None:
        # Every function is started (and imported) now: a broken one fails the
        # start, not the first request. A function with provisioned concurrency
        # starts that many workers.
        await self.functions.warm_all()
        self._runner = web.AppRunner(
            self.web_app, access_log=None, handle_signals=False, shutdown_timeout=CLEANUP_SECONDS
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
        self.functions.close()
