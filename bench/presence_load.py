"""Presence under load: many sessions of one shared agent connecting, heartbeating
and disconnecting at random against the local stack, then invariant 1 checked
through the backend's ``presence`` op.

    .venv/bin/python -m bench.presence_load [--sessions 200] [--seconds 20]

The stack is ``agent-channel dev`` (the same ``local.dev.run``) in a child
process, wrapped so that it counts, for the whole run, the PresenceRetries
metric the handlers add (the dev stack disables EMF output, so the count is
taken where the handlers add it) and the TransactionCanceledException and
ConditionalCheckFailedException answers DynamoDB gave. It prints them when it
stops. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"^READY (ws://127\.0\.0\.1:\d+/\S+) (\{.*\})$")
TOKEN_LINE = re.compile(r"^\s+token\s+(\S+)$")
SECRET_LINE = re.compile(r"^\s+secret\s+(\S+)$")
COUNTS_PREFIX = "BENCH-COUNTS "
HEARTBEAT_SECONDS = 1
STALE_AFTER_SECONDS = 10
GRACE_SECONDS = 3
START_TIMEOUT = 60.0
MAX_OPERATIONS = 50_000


def serve() -> int:
    """The child: the dev stack, with counters on the metric and on DynamoDB answers."""
    for path in (ROOT, ROOT / "lib"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import botocore.client
    from botocore.exceptions import ClientError

    from agent_channel.observability import metrics
    from agent_channel_dev.local import dev

    counts: Counter[str] = Counter()
    lock = threading.Lock()
    add_metric = metrics.add_metric

    def counted_metric(name: str, unit: Any, value: float, *args: Any, **kwargs: Any) -> None:
        with lock:
            counts[f"metric:{name}"] += int(value)
        add_metric(name, unit, value, *args, **kwargs)

    metrics.add_metric = counted_metric  # type: ignore[method-assign]
    original = botocore.client.BaseClient._make_api_call

    def counted_call(self: Any, operation: str, params: dict[str, Any]) -> Any:
        with lock:
            counts[f"call:{self.meta.service_model.service_name}:{operation}"] += 1
        try:
            return original(self, operation, params)
        except ClientError as error:
            with lock:
                counts[f"{operation}:{error.response['Error']['Code']}"] += 1
            raise

    botocore.client.BaseClient._make_api_call = counted_call  # type: ignore[method-assign]
    options = dev.DevOptions(
        port=0,
        heartbeat_seconds=HEARTBEAT_SECONDS,
        stale_after_seconds=STALE_AFTER_SECONDS,
        grace_seconds=GRACE_SECONDS,
        log_level="ERROR",
        # A throwaway data directory: the load must not start on, or leave, state.
        data_dir=tempfile.mkdtemp(prefix="agent-channel-bench-"),
    )
    code = dev.run(options)
    print(COUNTS_PREFIX + json.dumps(dict(counts)), flush=True)
    return code


@dataclass
class Stack:
    process: subprocess.Popen[str]
    ws_url: str
    backend: str
    agent_id: int
    token: str
    lines: list[str] = field(default_factory=list)
    secret: str = ""

    def presence(self) -> dict[str, Any]:
        if not self.backend.startswith("http://127.0.0.1:"):
            raise ValueError("the stack must be on loopback")
        request = urllib.request.Request(  # noqa: S310 (checked just above: loopback http)
            f"{self.backend}/_backend",
            data=json.dumps({"op": "presence", "agent_id": self.agent_id}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.secret}"},
        )
        # Generous: right after the load the stack may still be working through a
        # backlog of frames, and this request queues behind them.
        with urllib.request.urlopen(request, timeout=180) as answer:  # noqa: S310 (loopback)
            found: dict[str, Any] = json.loads(answer.read())
        return found

    def stop(self) -> dict[str, int]:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for line in self.lines:
            if line.startswith(COUNTS_PREFIX):
                counts: dict[str, int] = json.loads(line.removeprefix(COUNTS_PREFIX))
                return counts
        return {}


def start_stack() -> Stack:
    env = {
        k: v
        for k, v in __import__("os").environ.items()
        if not k.startswith(("AWS_", "POWERTOOLS_"))
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.presence_load", "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )
    lines: list[str] = []
    ready: re.Match[str] | None = None
    found = threading.Event()

    def pump() -> None:
        nonlocal ready
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            match = READY.match(line)
            if match:
                ready = match
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(START_TIMEOUT) or ready is None:
        process.kill()
        raise RuntimeError(f"the stack did not start: {lines[-20:]}")
    token = next(m.group(1) for line in lines if (m := TOKEN_LINE.match(line)))
    secret = next(m.group(1) for line in lines if (m := SECRET_LINE.match(line)))
    details = json.loads(ready.group(2))
    return Stack(
        process, ready.group(1), details["backend"], int(details["agent_id"]), token, lines, secret
    )


@dataclass
class LoadResult:
    sessions: int
    seconds: float
    operations: Counter[str]
    failures: Counter[str]
    open_at_end: int
    end_presence: dict[str, Any]
    after_close: dict[str, Any]
    counts: dict[str, int]

    @property
    def ops_per_second(self) -> float:
        return sum(self.operations.values()) / self.seconds

    @property
    def invariant_at_end(self) -> bool:
        """Invariant 1: routing on iff a live lease exists."""
        live = self.end_presence["live_sessions"]
        return bool(self.end_presence["routing"]) == (live > 0)

    @property
    def invariant_after_close(self) -> bool:
        return not self.after_close["routing"] and not self.after_close["leases"]


async def _load(
    stack: Stack, sessions: int, seconds: float, seed: int
) -> tuple[Counter[str], Counter[str], int, float]:
    import websockets

    rng = random.Random(seed)
    operations: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    sockets: dict[int, Any] = {}

    async def session(number: int) -> None:
        query = f"agent_id={stack.agent_id}&session_id=bench-{number}&token={stack.token}"
        url = f"{stack.ws_url}?{query}"
        while time.monotonic() < deadline and sum(operations.values()) < MAX_OPERATIONS:
            try:
                socket = await asyncio.wait_for(
                    websockets.connect(url, open_timeout=60, ping_interval=None), 90
                )
            except Exception as error:
                failures[f"connect:{type(error).__name__}"] += 1
                await asyncio.sleep(0.5)
                continue
            operations["connect"] += 1
            sockets[number] = socket
            try:
                for _ in range(rng.randint(0, 6)):
                    if time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(rng.uniform(0.2, 1.0))
                    await asyncio.wait_for(socket.send('{"action": "heartbeat"}'), 10)
                    operations["heartbeat"] += 1
                if time.monotonic() >= deadline:
                    return  # stays open: the end state has live sessions
                await asyncio.wait_for(socket.close(), 10)
                operations["disconnect"] += 1
                sockets.pop(number, None)
                await asyncio.sleep(rng.uniform(0.0, 0.3))
            except Exception as error:
                failures[f"session:{type(error).__name__}"] += 1
                sockets.pop(number, None)
                # Closed from this side too, so that every socket the server still
                # holds is one this loop still counts as open.
                socket.transport.abort()

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(session(n) for n in range(sessions))), seconds + 120)
    elapsed = time.monotonic() - started
    # Keep the survivors live while presence settles: a heartbeat each, then wait
    # for the handlers of the last frames to finish.
    for socket in list(sockets.values()):
        await socket.send('{"action": "heartbeat"}')
    await asyncio.sleep(1.5)
    open_at_end = len(sockets)
    stack_presence = await asyncio.to_thread(stack.presence)
    _end[:] = [stack_presence]
    await asyncio.gather(*(socket.close() for socket in sockets.values()))
    return operations, failures, open_at_end, elapsed


_end: list[dict[str, Any]] = []


def run(sessions: int = 200, seconds: float = 20.0, seed: int = 7) -> LoadResult:
    stack = start_stack()
    try:
        operations, failures, open_at_end, elapsed = asyncio.run(
            _load(stack, sessions, seconds, seed)
        )
        end_presence = _end[0]
        # After every socket closed: routing off and no lease, once $disconnects ran.
        deadline = time.monotonic() + 120
        after = stack.presence()
        while (after["routing"] or after["leases"]) and time.monotonic() < deadline:
            time.sleep(0.5)
            after = stack.presence()
    finally:
        counts = stack.stop()
    return LoadResult(
        sessions, elapsed, operations, failures, open_at_end, end_presence, after, counts
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    result = run(args.sessions, args.seconds)
    print(json.dumps(result.__dict__, default=str, indent=2))
    print("ops/s", round(result.ops_per_second, 1), "invariant", result.invariant_at_end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
