"""The functions of a SAM app, each in warm worker processes of its own.

As Lambda runs each function in execution environments of its own, each function
here gets worker processes of its own (``worker_main``), started from a fork
server that has only preloaded botocore, so a worker costs a fork and the
function's own imports. A worker serves one invocation at a time; concurrent
invocations of one function start more workers (up to ``max_concurrency``), and
different functions always run in parallel, on every core. A worker is kept warm
between invocations. An invocation that outlives the function's ``Timeout`` has
its worker killed (the next one starts cold, as Lambda resets the execution
environment) and fails with Lambda's timeout error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import Any

from agent_channel_dev.local.intrinsics import REGION
from agent_channel_dev.local.sam_app import FunctionSpec, SamApp
from agent_channel_dev.local.worker_main import WorkerSpec, serve

DEFAULT_MAX_CONCURRENCY = 8
"""Workers per function at most; further invocations wait (Lambda would throttle)."""
INIT_TIMEOUT_SECONDS = 30.0
"""Lambda allows 10 s of init; a loaded two-core laptop needs more for a cold import."""
PRELOAD = ["botocore.session", "botocore.endpoint", "boto3", "json"]
"""Imported once in the fork server: they read no environment at import."""


class FunctionError(Exception):
    """The function failed: an unhandled error, a timeout, or a failed init.

    ``payload`` is what Lambda reports (``errorType``, ``errorMessage``)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(str(payload.get("errorMessage", "")))
        self.payload = payload

    @property
    def error_type(self) -> str:
        return str(self.payload.get("errorType", ""))


class FunctionTimedOut(FunctionError):
    pass


def lambda_environment(
    spec: FunctionSpec,
    *,
    endpoint_url: str,
    access_key: tuple[str, str],
    api_endpoint: tuple[str, str] | None = None,
) -> dict[str, str]:
    """The template's variables plus what Lambda's runtime sets, and nothing else
    of this process (the local endpoint and credentials stand in for AWS's).

    ``api_endpoint`` is (the API's execute-api domain, the local gateway's
    ``http://HOST:PORT``): a variable that holds the deployed API's URL (a
    callback URL) holds the local gateway's instead, as ``AWS_ENDPOINT_URL``
    stands in for the other services.
    """
    environment = dict(spec.environment)
    if api_endpoint is not None:
        domain, origin = api_endpoint
        for name, value in environment.items():
            value = value.replace(f"https://{domain}", origin)
            environment[name] = value.replace(f"wss://{domain}", "ws" + origin.removeprefix("http"))
    environment.update(
        {
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "local",
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "LAMBDA_TASK_ROOT": str(spec.code_dir),
            # What SAM CLI's emulator sets: no X-Ray daemon here, so Powertools'
            # Tracer stays off instead of discarding every segment it opens.
            "AWS_SAM_LOCAL": "true",
            "_HANDLER": spec.handler,
            "TZ": ":UTC",
            "LANG": "en_US.UTF-8",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_ACCESS_KEY_ID": access_key[0],
            "AWS_SECRET_ACCESS_KEY": access_key[1],
            # Not Lambda's: every AWS call goes to the stack's moto instead.
            "AWS_ENDPOINT_URL": endpoint_url,
        }
    )
    return environment


@dataclass
class _Worker:
    process: Any
    conn: Connection


@dataclass
class FunctionPool:
    spec: FunctionSpec
    worker_spec: WorkerSpec
    context: ForkServerContext
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    _idle: list[_Worker] = field(default_factory=list)
    _slots: asyncio.Semaphore | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        return self._slots

    def _start(self) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(
            target=serve, args=(child, self.worker_spec), name=self.spec.logical_id, daemon=True
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        if not parent.poll(INIT_TIMEOUT_SECONDS):
            self._kill(worker)
            raise FunctionError({"errorType": "Runtime.InitTimeout", "errorMessage": "init"})
        try:
            kind, payload = parent.recv()
        except EOFError:
            self._kill(worker)
            raise FunctionError(
                {"errorType": "Runtime.ExitError", "errorMessage": "exited during init"}
            ) from None
        if kind != "ready":
            self._kill(worker)
            raise FunctionError(json.loads(payload))
        return worker

    @staticmethod
    def _kill(worker: _Worker) -> None:
        with contextlib.suppress(Exception):
            worker.process.kill()
            worker.process.join(5)
        with contextlib.suppress(Exception):
            worker.conn.close()

    def _call(self, worker: _Worker | None, event: Any) -> tuple[_Worker | None, str, str]:
        """Run one invocation on ``worker`` (a new one if None), blocking. The worker
        comes back unless it had to be killed (a timeout, a crash)."""
        worker = worker or self._start()
        request_id = str(uuid.uuid4())
        timeout = self.spec.timeout_seconds
        worker.conn.send((request_id, json.dumps(event), time.time() + timeout))
        if not worker.conn.poll(timeout):
            self._kill(worker)
            message = f"{request_id} Task timed out after {timeout:.2f} seconds"
            return (
                None,
                "timeout",
                json.dumps({"errorType": "Sandbox.Timedout", "errorMessage": message}),
            )
        try:
            kind, payload = worker.conn.recv()
        except EOFError:
            self._kill(worker)
            return (
                None,
                "error",
                json.dumps(
                    {"errorType": "Runtime.ExitError", "errorMessage": "the runtime exited"}
                ),
            )
        return worker, kind, payload

    async def invoke(self, event: Any) -> Any:
        async with self._semaphore():
            worker = self._idle.pop() if self._idle else None
            kept, kind, payload = await asyncio.to_thread(self._call, worker, event)
            if kept is not None:
                # Warm for the next invocation, after an unhandled error too (as Lambda).
                self._idle.append(kept)
            if kind == "timeout":
                raise FunctionTimedOut(json.loads(payload))
            if kind != "ok":
                raise FunctionError(json.loads(payload))
            return json.loads(payload)

    async def warm(self, workers: int = 1) -> None:
        """Start ``workers`` workers now (at most ``max_concurrency``), one after
        another: a function that cannot even import fails the start."""
        for _ in range(max(1, min(workers, self.max_concurrency))):
            async with self._semaphore():
                try:
                    self._idle.append(await asyncio.to_thread(self._start))
                except FunctionError as failed:
                    failed.payload["function"] = self.spec.logical_id
                    raise

    def close(self) -> None:
        while self._idle:
            worker = self._idle.pop()
            with contextlib.suppress(Exception):
                worker.conn.close()  # the worker sees EOF and returns
            worker.process.join(2)
            if worker.process.is_alive():
                self._kill(worker)


class Functions:
    """Every function of the app, by logical id."""

    def __init__(
        self,
        app: SamApp,
        *,
        environment: Callable[[FunctionSpec], dict[str, str]],
        local_origin: str,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        provisioned: dict[str, int] | None = None,
    ) -> None:
        self._provisioned = dict(provisioned or {})
        """Workers ``warm_all`` starts, by logical id (one for any other): as
        Lambda's provisioned concurrency keeps environments initialized, so that a
        rising load does not wait for cold starts. Here a cold start also takes its
        CPU from every other invocation on the machine, where Lambda gives it an
        environment of its own."""
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        self._pools = {
            logical_id: FunctionPool(
                spec,
                WorkerSpec(
                    function_name=spec.name,
                    handler=spec.handler,
                    code_dir=str(spec.code_dir),
                    layer_dirs=tuple(str(d) for d in spec.layer_dirs),
                    environment=environment(spec),
                    memory_mb=spec.memory_mb,
                    execute_api_host=app.api.domain_name,
                    local_origin=local_origin,
                ),
                context,
                max_concurrency,
            )
            for logical_id, spec in app.functions.items()
        }
        unknown = sorted(set(self._provisioned) - set(self._pools))
        if unknown:
            raise ValueError(f"provisioned concurrency for no such function: {unknown}")

    async def invoke(self, logical_id: str, event: Any) -> Any:
        return await self._pools[logical_id].invoke(event)

    async def warm_all(self) -> None:
        await asyncio.gather(
            *(pool.warm(self._provisioned.get(name, 1)) for name, pool in self._pools.items())
        )

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
