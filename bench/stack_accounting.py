"""Server-side accounting for a local stack under load.

The handlers run in worker processes, so nothing the load driver's process hooks
sees their requests. What every request does pass through is the stack: each
DynamoDB, Scheduler or EventBridge request is one call of its moto server
(``moto_server.OneRequestAtATime``, in moto's own process), and each invocation
is one ``Functions.invoke`` (in the stack's process). This module wraps both: the
invocations in the child process that runs ``agent-channel dev`` for a
benchmark, moto's requests in moto's process (a hook of ``moto_process``,
read back by command). The stack's process serves what was counted as JSON on a
loopback port of its own:

- moto: requests by (function, operation), error answers by (operation, code),
  a TransactWriteItems named with its number of items (``TransactWriteItems (2
  items)``: its cost in moto grows with its size),
  the wall time moto held its one-request lock (busy time) and the CPU time its
  thread spent inside it. Which function sent a request is read from the SigV4
  access key in its ``Authorization`` header: the local stack gives every function
  a key of its own (``stack.LocalStack.build``); the stack's own calls (its
  schedule loop, the task-event pipe) sign with ``local``. The gateway's AWS
  service integrations (the heartbeat route: no Lambda) are given a key of their
  own here, so their requests count as theirs (``HeartbeatIntegration``), not the
  stack's.
- invocations: by function, with their outcome and duration (queueing for a free
  worker included: it is part of what a client waits for), and how many are in
  flight, so a driver can wait until the stack is idle. A frame through a service
  integration counts as an invocation of ``<Route>Integration``, timed from the
  call to the service's answer.
- the gateway: its open sockets (with the agent and session each was opened
  for), the frames its sockets still have queued, the upgrades and closes it is
  still handling, and the connections whose ``$connect`` answered 200 but whose
  socket the gateway never held (the client had gone: no ``$disconnect`` follows,
  as API Gateway's is best effort). A driver checks presence against these, what
  the server knows, rather than against what its clients believe.
- CPU seconds of the stack process, of moto's and of the worker processes.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import multiprocessing
import os
import pstats
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CREDENTIAL = re.compile(r"Credential=([^/]+)/[^/]+/[^/]+/([^/]+)/")
STACK_KEY = "local"
INTEGRATIONS_KEY = "integrations"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Accounting:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.keys: dict[str, str] = {STACK_KEY: "stack"}
        """SigV4 access key -> the function (or part of the stack) that signs with it."""
        self.moto_process: Any = None
        """The stack's ``moto_process.MotoProcess``: its requests are counted there."""
        self.invocations: Counter[str] = Counter()
        self.durations: dict[str, list[float]] = {}
        self.cold_starts: Counter[str] = Counter()
        """Workers started, by function: an invocation that found no warm worker
        waited for one's init (Lambda's cold start)."""
        self.in_flight = 0
        self.handlers = 0
        """The gateway's socket handlers running: one per open socket, plus each
        upgrade not yet answered and each close whose ``$disconnect`` is not done."""
        self.connected: set[str] = set()
        """Connection ids whose ``$connect`` answered 2xx."""
        self.connect_failed: set[str] = set()
        """Connection ids whose ``$connect`` failed or refused (a timeout may come
        after the function's writes): the gateway refuses, no ``$disconnect`` follows."""
        self.disconnected: set[str] = set()
        """Connection ids whose ``$disconnect`` answered."""
        self.disconnect_failed: set[str] = set()
        """Connection ids whose ``$disconnect`` failed (an error, a timeout)."""
        self.open_sockets: Any = None
        self.gateway: Any = None
        self.tables: list[str] = []

    # -- invocations ----------------------------------------------------------

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, function: str, outcome: str, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.invocations[f"{function}|{outcome}"] += 1
            self.durations.setdefault(function, []).append(seconds)

    def lifecycle(self, event: Any, outcome: str) -> None:
        """Which connections ``$connect`` accepted and which got a ``$disconnect``."""
        context = event.get("requestContext") if isinstance(event, dict) else None
        # The authorizer's event names $connect too; its Allow is not the connect's 200.
        if not isinstance(context, dict) or "methodArn" in event:
            return
        route, connection_id = context.get("routeKey"), context.get("connectionId")
        with self._lock:
            if route == "$connect":
                (self.connected if outcome == "ok" else self.connect_failed).add(str(connection_id))
            elif route == "$disconnect":
                done = self.disconnected if outcome == "ok" else self.disconnect_failed
                done.add(str(connection_id))

    def handling(self, change: int) -> None:
        with self._lock:
            self.handlers += change

    def connections(self) -> dict[str, Any]:
        """What the gateway holds, by connection: the server's view of the sessions."""
        sockets = self.gateway.sockets() if self.gateway else {}
        with self._lock:
            failed = self.disconnect_failed - self.disconnected
            dropped = self.connected - self.disconnected - failed - set(sockets)
            refused = self.connect_failed - self.connected
        return {
            "open": sockets,
            "dropped": sorted(dropped),
            "connect_failed": sorted(refused),
            "disconnect_failed": sorted(failed),
        }

    # -- the snapshot -----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        moto = self.moto_process.call(MOTO_COUNTS, self.tables) if self.moto_process else {}
        requests: Counter[str] = Counter()
        for key_operation, n in moto.pop("requests", {}).items():
            key, operation = key_operation.split("|", 1)
            requests[f"{self.keys.get(key, key)}|{operation}"] += n
        with self._lock:
            found: dict[str, Any] = {
                "at": time.monotonic(),
                "requests": dict(requests),
                **moto,
                "invocations": dict(self.invocations),
                "durations": {name: list(values) for name, values in self.durations.items()},
                "cold_starts": dict(self.cold_starts),
                "in_flight": self.in_flight,
            }
        found["open_sockets"] = self.open_sockets() if self.open_sockets else None
        found["handlers"] = self.handlers
        found["queued_frames"] = self.gateway.queued_frames() if self.gateway else None
        found["stack_cpu"] = time.process_time()
        found["worker_cpu"] = _workers_cpu()
        return found


MOTO_COUNTS = "moto_counts"
MOTO_PROFILE = "moto_profile"


class MotoCounts:
    """moto's requests, counted in moto's process (``count_moto_requests``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        """``access key|service:Operation`` -> requests (the stack names the keys)."""
        self.errors: Counter[str] = Counter()
        self.busy = 0.0
        self.busy_by_operation: dict[str, float] = {}
        self.cpu = 0.0
        self.profile: cProfile.Profile | None = None
        self.profile_operation = ""
        """``BENCH_PROFILE=Operation``: moto's handling of that operation is profiled
        (cProfile) and printed when the stack stops."""

    def describe(self, environ: dict[str, Any]) -> tuple[str, str]:
        """(the access key that signed it, ``service:Operation``) for one request."""
        match = CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        key, service = (match.group(1), match.group(2)) if match else ("?", "?")
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target:
            operation = target.rsplit(".", 1)[-1]
            if operation == "TransactWriteItems":
                operation = transaction_name(_transaction_items(environ))
        else:
            # REST-JSON services (Scheduler): the method and the resource name it
            # acts on stand for the operation.
            method = environ.get("REQUEST_METHOD", "")
            resource = environ.get("PATH_INFO", "").strip("/").split("/", 1)[0]
            if service == "scheduler" and resource == "schedules":
                verbs = {"POST": "Create", "DELETE": "Delete", "PUT": "Update", "GET": "Get"}
                operation = verbs.get(method, method) + "Schedule"
            else:
                operation = f"{method} /{resource}"
        return key, f"{service}:{operation}"

    def count(
        self, key: str, operation: str, status: str, body: list[bytes], busy: float, cpu: float
    ) -> None:
        code = ""
        if status[:1] in ("4", "5"):
            try:
                answer = json.loads(b"".join(body) or b"{}")
                code = str(answer.get("__type") or answer.get("Code") or "").rsplit("#", 1)[-1]
            except ValueError:
                code = ""
            code = code or status.split(" ", 1)[0]
        with self._lock:
            self.requests[f"{key}|{operation}"] += 1
            if code:
                self.errors[f"{operation}:{code}"] += 1
            self.busy += busy
            self.busy_by_operation[operation] = self.busy_by_operation.get(operation, 0.0) + busy
            self.cpu += cpu

    def snapshot(self, tables: list[str]) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "errors": dict(self.errors),
                "moto_busy": self.busy,
                "busy_by_operation": dict(self.busy_by_operation),
                "moto_cpu": self.cpu,
                "moto_process_cpu": time.process_time(),
                "table_items": _table_items(tables),
            }

    def profile_text(self) -> str:
        if self.profile is None:
            return ""
        out = io.StringIO()
        pstats.Stats(self.profile, stream=out).sort_stats("cumulative").print_stats(40)
        return out.getvalue()


TRANSACTION = re.compile(r"TransactWriteItems \((\d+) items?\)")


def transaction_name(items: int) -> str:
    """The operation a TransactWriteItems of this many items is counted under."""
    return f"TransactWriteItems ({items} item{'' if items == 1 else 's'})"


def transaction_size(operation: str) -> int:
    """The items of a ``transaction_name``; 0 for any other operation."""
    match = TRANSACTION.fullmatch(operation)
    return int(match.group(1)) if match else 0


def _transaction_items(environ: dict[str, Any]) -> int:
    """How many items the request's transaction holds; the body is read once and
    put back for moto to read."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    try:
        items = json.loads(body).get("TransactItems")
    except (ValueError, AttributeError):
        return 0
    return len(items) if isinstance(items, list) else 0


def _workers_cpu() -> float:
    """CPU seconds of the live worker processes (utime + stime from /proc); moto's
    process is counted on its own (``moto_process_cpu``)."""
    from agent_channel_dev.local.moto_process import PROCESS_NAME

    total = 0
    for child in multiprocessing.active_children():
        if child.name == PROCESS_NAME:
            continue
        try:
            with open(f"/proc/{child.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / _TICKS


def count_moto_requests(server: Any) -> dict[str, Any]:
    """A ``moto_process`` hook: count every request moto serves, in moto's process;
    the commands that read the counts back."""
    from agent_channel_dev.local import moto_server

    counts = MotoCounts()
    if os.environ.get("BENCH_PROFILE"):
        counts.profile = cProfile.Profile()
        counts.profile_operation = os.environ["BENCH_PROFILE"]

    def counted_call(
        self: moto_server.OneRequestAtATime, environ: dict[str, Any], start_response: Any
    ) -> list[bytes]:
        key, operation = counts.describe(environ)
        status: list[str] = []

        def capture(code: str, headers: Any, *rest: Any) -> Any:
            status.append(code)
            return start_response(code, headers, *rest)

        # The same one-at-a-time section as the original, timed inside the lock:
        # the busy time is moto's, not the wait for it.
        with self._lock:
            wall, cpu = time.perf_counter(), time.thread_time()
            if counts.profile is not None and operation.endswith(counts.profile_operation):
                # Profiled here, in moto's thread: cProfile sees only this thread.
                counts.profile.enable()
                body = list(self._app(environ, capture))
                counts.profile.disable()
            else:
                body = list(self._app(environ, capture))
            busy, spent = time.perf_counter() - wall, time.thread_time() - cpu
        counts.count(key, operation, status[0] if status else "", body, busy, spent)
        return body

    moto_server.OneRequestAtATime.__call__ = counted_call  # type: ignore[method-assign]
    return {MOTO_COUNTS: counts.snapshot, MOTO_PROFILE: counts.profile_text}


def install(accounting: Accounting) -> None:
    """Wrap the local stack's moto server and invocations (before the stack starts)."""
    from agent_channel_dev.local import gateway, moto_process, service_integration, stack, workers

    start_moto = moto_process.MotoProcess.start

    def counting_start(self: moto_process.MotoProcess) -> None:
        self.hooks.append(f"{__name__}:{count_moto_requests.__name__}")
        accounting.moto_process = self
        start_moto(self)

    moto_process.MotoProcess.start = counting_start  # type: ignore[method-assign]

    stop_moto = moto_process.MotoProcess.stop

    def profiled_stop(self: moto_process.MotoProcess) -> None:
        # BENCH_PROFILE: moto's profile, before its process goes (BENCH_PROFILE_TO).
        with contextlib.suppress(moto_process.MotoProcessError):
            print(self.call(MOTO_PROFILE), file=sys.stderr, end="")
        stop_moto(self)

    moto_process.MotoProcess.stop = profiled_stop  # type: ignore[method-assign]

    invoke = workers.Functions.invoke

    async def timed_invoke(self: workers.Functions, logical_id: str, event: Any) -> Any:
        accounting.started()
        started = time.perf_counter()
        try:
            result = await invoke(self, logical_id, event)
        except BaseException as error:
            accounting.lifecycle(event, type(error).__name__)
            accounting.finished(logical_id, type(error).__name__, time.perf_counter() - started)
            raise
        outcome = "ok"
        status = result.get("statusCode") if isinstance(result, dict) else None
        if isinstance(status, int) and not 200 <= status < 300:
            outcome = f"status {status}"
        # Recorded before the invocation counts as finished: a driver that sees no
        # invocation in flight also sees every connect's and disconnect's outcome.
        accounting.lifecycle(event, outcome)
        accounting.finished(logical_id, outcome, time.perf_counter() - started)
        return result

    workers.Functions.invoke = timed_invoke  # type: ignore[method-assign]

    start_worker = workers.FunctionPool._start

    def counted_start(self: workers.FunctionPool) -> Any:
        worker = start_worker(self)
        with accounting._lock:
            accounting.cold_starts[self.spec.logical_id] += 1
        return worker

    workers.FunctionPool._start = counted_start  # type: ignore[method-assign]

    run_integration = service_integration.run

    def timed_integration(integration: Any, *args: Any, **kwargs: Any) -> Any:
        # Called off the event loop (asyncio.to_thread), like a Lambda's invoke
        # counted above; in flight too, so an idle stack has none running.
        name = integration_name(integration.route_key)
        accounting.started()
        started = time.perf_counter()
        try:
            outcome = run_integration(integration, *args, **kwargs)
        except BaseException as error:
            accounting.finished(name, type(error).__name__, time.perf_counter() - started)
            raise
        status = getattr(outcome, "status", 200)
        verdict = "ok" if isinstance(status, int) and 200 <= status < 300 else f"status {status}"
        accounting.finished(name, verdict, time.perf_counter() - started)
        return outcome

    service_integration.run = timed_integration

    handle = gateway.Gateway.handle_socket

    async def counted_handle(self: gateway.Gateway, request: Any) -> Any:
        # Counted for the whole handler: the upgrade (authorizer, $connect), the
        # socket's life, and the $disconnect after it; more handlers than open
        # sockets means an upgrade or a close is still in progress.
        accounting.handling(1)
        try:
            return await handle(self, request)
        finally:
            accounting.handling(-1)

    gateway.Gateway.handle_socket = counted_handle  # type: ignore[method-assign]

    build = stack.LocalStack.build.__func__  # type: ignore[attr-defined]

    def adopting_build(cls: type[stack.LocalStack], *args: Any, **kwargs: Any) -> Any:
        built = build(cls, *args, **kwargs)
        for logical_id, pool in built.functions._pools.items():
            accounting.keys[pool.worker_spec.environment["AWS_ACCESS_KEY_ID"]] = logical_id
        accounting.open_sockets = lambda: len(built.gateway._sockets)
        accounting.gateway = GatewayView(built.gateway)
        services = built.gateway._services
        if services is not None:
            import boto3

            # The same moto, signed with a key of the integrations' own.
            built.gateway._services = boto3.client(
                "dynamodb",
                endpoint_url=services.meta.endpoint_url,
                region_name=services.meta.region_name,
                aws_access_key_id=INTEGRATIONS_KEY,
                aws_secret_access_key=INTEGRATIONS_KEY,
            )
            routes = sorted(built.app.api.services)
            # One client for every integration: named after the route when there
            # is one (the heartbeat), else for them all.
            accounting.keys[INTEGRATIONS_KEY] = (
                integration_name(routes[0]) if len(routes) == 1 else "ServiceIntegrations"
            )
        accounting.tables = [table.create_kwargs["TableName"] for table in built.app.tables]
        return built

    stack.LocalStack.build = classmethod(adopting_build)  # type: ignore[method-assign, assignment]


def integration_name(route_key: str) -> str:
    """``heartbeat`` -> ``HeartbeatIntegration`` (the template's logical id)."""
    return route_key[:1].upper() + route_key[1:] + "Integration"


class GatewayView:
    """The gateway's sockets, read from the stats thread while the event loop runs."""

    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway

    def _live(self) -> list[Any]:
        # The loop may add or remove a socket while this thread copies the dict:
        # copy again (the copy itself is one C call, rarely interrupted).
        for _ in range(100):
            try:
                return list(self._gateway._sockets.values())
            except RuntimeError:
                continue
        return []

    def sockets(self) -> dict[str, list[str]]:
        """Connection id -> [agent_id, session_id] of the upgrade's query (never the
        token)."""
        found: dict[str, list[str]] = {}
        for live in self._live():
            query = dict(live.upgrade.query)
            found[live.connection_id] = [query.get("agent_id", ""), query.get("session_id", "")]
        return found

    def queued_frames(self) -> int:
        """Frames whose route invocation has not finished (or not started)."""
        return sum(len(live.tasks) for live in self._live())


def _table_items(names: list[str]) -> dict[str, int] | None:
    """Items in the app's tables, read from moto's backend (in moto's process)."""
    try:
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        backend = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
        tables = [backend.tables[name] for name in names if name in backend.tables]
        # Items, and the stream records moto still keeps (each transaction copies both).
        return {
            "items": sum(len(table) for table in tables),
            "stream_records": sum(
                len(table.stream_shard.items) for table in tables if table.stream_shard
            ),
        }
    except Exception:
        return None


def serve_stats(accounting: Accounting) -> str:
    """Serve ``GET /`` -> the snapshot, ``GET /connections`` -> the gateway's sockets
    (``Accounting.connections``), as JSON on a free loopback port; the snapshot's URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = accounting.connections() if self.path == "/connections" else None
            body = json.dumps(found if found is not None else accounting.snapshot()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="stats", daemon=True).start()
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}/"
