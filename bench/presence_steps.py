"""Presence under a stepped arrival rate, against the real local stack.

    .venv/bin/python -m bench.presence_steps [--rates 1 2 4 8] [--step-seconds 45]

The stack is ``agent-channel dev`` (``local.dev.run``) in a child process, with
production timings (heartbeat 15 s, stale after 45 s: what issue 16 asks for; the
template's default heartbeat is 30 s, which halves the heartbeat traffic, so 15 s
is the harder case) and server-side accounting (``bench.stack_accounting``):
DynamoDB and Scheduler requests counted where moto serves them, by the function
that sent them; invocations counted and timed where the gateway makes them.

The clients are real WebSocket clients (``websockets``, one asyncio loop, on
loopback). Sessions arrive as a Poisson process at each step's rate, for a
fixed time per step; each connects as one of many agents (2 or 3 session slots
each, all owned by the demo owner and opened with its token), heartbeats every
15 s and disconnects after a lifetime drawn from a range. A step past the knee
(a client timeout or failure, connect p99 several times the first step's, or
fewer sessions connected than arrived) ends the stepping. Then the live state is
held (no new session, none leaves) and checked, one busy agent with many
sessions runs a step of its own, every socket closes, and the state is checked
again. Each check waits until the stack is idle (no invocation in flight, no
frame queued, no upgrade or close in progress: ``bench.stack_accounting``), then
compares each agent's presence with what the server knows, the gateway's open
sockets (``check_agent``):

- protocol violations: routing on with no lease, a live lease with routing off
  (the design's invariant 1), a lease whose connection the gateway has closed
  and sent its ``$disconnect`` for (no lease outlives its connection), and, while
  held, a session its client holds open and heartbeats without a live lease;
- client/server disagreements a client's abandoned connect explains: a client
  that gave up at its timeout while the server completed the upgrade. The
  gateway then drops the socket after ``$connect``'s 200 without a
  ``$disconnect`` (best effort on API Gateway too), so the lease stays until it
  is stale and the sweeper reaps it; or the gateway still holds a socket the
  client no longer does;
- leases a failed ``$connect`` (timed out after its writes: refused, so no
  ``$disconnect``) or a failed ``$disconnect`` left: the sweeper reaps them;
- any other disagreement (a client holding a session the gateway does not) is
  reported as unexplained.

moto's raw capacity (``bench.moto_capacity``: moto alone in a process of its
own, each transaction size apart) is probed on copies of the stack's table: as
each step left it (its live sessions' items in it: moto's cost per request grows
with the table), and before and after the steps (the stack idle). Each step's
DynamoDB and Scheduler request rate is given as a fraction of what moto alone
serves for that step's request mix on the table as the step found it (the
previous step's) and as it left it, a range, with the idle probes' figures
beside. The stack's moto busy time (its one-request lock held) is given beside:
the same fraction measured inside the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"^READY (ws://127\.0\.0\.1:\d+/\S+) (\{.*\})$")
TOKEN_LINE = re.compile(r"^\s+token\s+(\S+)$")
SECRET_LINE = re.compile(r"^\s+secret\s+(\S+)$")
STATS_PREFIX = "BENCH-STATS "
START_TIMEOUT = 90.0
CONNECT_TIMEOUT = 10.0
"""The reference agent client's ``open_timeout``: longer is a client timeout."""
CLOSE_TIMEOUT = 10.0
IDLE_BOUND = 600.0
"""How long a check waits for the stack to go idle. Past the knee the stack has
minutes of queued connects, heartbeats and disconnects to work through; a check
made before they are done would report its own timing, not the protocol."""
IDLE_POLL = 0.5
LIFECYCLE_FUNCTIONS = ("AuthorizeFunction", "ConnectFunction", "DisconnectFunction")
KNEE_P99_FACTOR = 4.0
"""Connect p99 this many times the first step's marks the knee."""
KNEE_ARRIVED_SHARE = 0.9
BACKEND_THREADS = 8

# What a function's invocations stand for in the report.
CONNECT_FUNCTIONS = ("AuthorizeFunction", "ConnectFunction")
PROVISIONED_FUNCTIONS = (*LIFECYCLE_FUNCTIONS, "CancelOfflineFunction")
HEARTBEAT_FUNCTION = "HeartbeatIntegration"
"""The heartbeat route runs no Lambda: API Gateway's DynamoDB integration renews the
lease (template.yaml); the accounting counts its calls and requests under this name."""
DISCONNECT_FUNCTION = "DisconnectFunction"
BACKGROUND = (
    "stack",
    "SweeperFunction",
    "RedeliveryFunction",
    "CancelOfflineFunction",
    "BackendFunction",
    "AdminFunction",
)


@dataclass(frozen=True)
class Plan:
    rates: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0)
    """Arrivals per second, half a step apart where the knee has been on a 2-core
    machine (5-6/s, with moto in a process of its own): the last step below it is
    found to within 0.5/s."""
    step_seconds: float = 45.0
    lifetime: tuple[float, float] = (20.0, 60.0)
    heartbeat_seconds: int = 15
    stale_after_seconds: int = 45
    grace_seconds: int = 30
    busy_sessions: int = 40
    probe_seconds: float = 2.0
    seed: int = 16
    provisioned_workers: int = 8
    """Workers started before the steps for each function a step invokes (the
    local stack's provisioned concurrency; its most, ``max_concurrency``)."""

    @property
    def busy_rate(self) -> float:
        """Arrivals that keep the busy agent's slots about full."""
        return self.busy_sessions / statistics.mean(self.lifetime)

    @property
    def agents(self) -> int:
        """Enough agents (2.5 slots each on average) for the most sessions live at
        once at the highest rate, with a margin."""
        live = max(self.rates) * self.lifetime[1] * 1.2
        return max(4, math.ceil(live / 2.5))

    def command(self) -> str:
        rates = " ".join(f"{r:g}" for r in self.rates)
        return (
            f".venv/bin/python -m bench.presence_steps --rates {rates} "
            f"--step-seconds {self.step_seconds:g} --lifetime {self.lifetime[0]:g} "
            f"{self.lifetime[1]:g} --busy-sessions {self.busy_sessions}"
        )


QUICK = Plan(rates=(1.0, 2.0), step_seconds=20.0, lifetime=(10.0, 30.0), busy_sessions=10)
"""``make bench --quick``: a smoke run of the same shape."""
GOAL_SHARE = 0.5
"""Issue 16: at least half of moto's capacity for the request mix below the knee."""


# -- the child: the stack with its accounting --------------------------------------


def serve(heartbeat: int, stale: int, grace: int, provisioned_workers: int) -> int:
    for path in (ROOT, ROOT / "lib", ROOT / "devtools"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from agent_channel_dev.local import dev
    from bench import stack_accounting

    accounting = stack_accounting.Accounting()
    # BENCH_PROFILE=Operation: moto's handling of it is profiled in moto's process.
    stack_accounting.install(accounting)
    print(STATS_PREFIX + stack_accounting.serve_stats(accounting), flush=True)
    options = dev.DevOptions(
        port=0,
        heartbeat_seconds=heartbeat,
        stale_after_seconds=stale,
        grace_seconds=grace,
        log_level="ERROR",
        # A throwaway data directory: the load must not start on, or leave, state.
        data_dir=tempfile.mkdtemp(prefix="agent-channel-bench-"),
        # Lambda's default account concurrency is far above this; the local stack's
        # default (8 workers per function) is what a laptop runs.
        max_concurrency=8,
        # The functions a step invokes, that many workers of each started before the
        # steps (provisioned concurrency): here a cold start takes its CPU from every
        # other invocation on the machine's cores, where Lambda gives it an
        # environment of its own, and under a rising load the cold starts fed on
        # each other. Those that still happen are counted per step.
        provisioned={name: provisioned_workers for name in PROVISIONED_FUNCTIONS},
    )
    return dev.run(options)


@dataclass
class Stack:
    process: subprocess.Popen[str]
    ws_url: str
    backend: str
    owner_id: int
    agent_id: int
    token: str
    secret: str
    stats_url: str
    moto: str
    lines: list[str]

    def command(self, command: dict[str, Any], path: str = "/_backend") -> dict[str, Any]:
        """A command to the BackendFunction (``/_admin``: the AdminFunction)."""
        if not self.backend.startswith("http://127.0.0.1:"):
            raise ValueError("the stack must be on loopback")
        request = urllib.request.Request(  # noqa: S310 (checked just above: loopback http)
            f"{self.backend}{path}",
            data=json.dumps(command).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.secret}"},
        )
        with urllib.request.urlopen(request, timeout=120) as answer:  # noqa: S310 (loopback)
            found: dict[str, Any] = json.loads(answer.read())
        return found

    def stats(self) -> dict[str, Any]:
        if not self.stats_url.startswith("http://127.0.0.1:"):
            raise ValueError("the stats must be on loopback")
        with urllib.request.urlopen(self.stats_url, timeout=30) as answer:  # noqa: S310
            found: dict[str, Any] = json.loads(answer.read())
        return found

    def connections(self) -> ServerView:
        with urllib.request.urlopen(  # noqa: S310 (stats_url is checked to be loopback)
            self.stats_url.rstrip("/") + "/connections", timeout=30
        ) as answer:
            found = json.loads(answer.read())
        return ServerView(
            {cid: (int(agent), session) for cid, (agent, session) in found["open"].items()},
            frozenset(found["dropped"]),
            frozenset(found["connect_failed"]),
            frozenset(found["disconnect_failed"]),
        )

    def wait_idle(self, expect_open: int | None = None, bound: float = IDLE_BOUND) -> Idle:
        """Until the stack is idle on two polls in a row with no connect or
        disconnect between them (and, when given, holds ``expect_open`` sockets), or
        ``bound`` seconds: the caller reports which."""
        started = time.monotonic()
        previous: tuple[int, ...] | None = None
        while True:
            found = self.stats()
            quiet = (
                found["in_flight"] == 0
                and found["queued_frames"] == 0
                # More handlers than sockets: an upgrade or a close still in progress.
                and found["handlers"] == found["open_sockets"]
                and (expect_open is None or found["open_sockets"] == expect_open)
            )
            lifecycle = tuple(
                sum(n for key, n in found["invocations"].items() if key.startswith(f"{name}|"))
                for name in LIFECYCLE_FUNCTIONS
            )
            waited = time.monotonic() - started
            if quiet and previous == lifecycle:
                return Idle(found, waited, True)
            if waited > bound:
                return Idle(found, waited, False)
            previous = lifecycle if quiet else None
            time.sleep(IDLE_POLL)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass(frozen=True)
class Idle:
    stats: dict[str, Any]
    seconds: float
    reached: bool


@dataclass(frozen=True)
class ServerView:
    """What the stack knows about connections, read once it is idle."""

    open: dict[str, tuple[int, str]]
    """The gateway's open sockets: connection id -> (agent id, session id)."""
    dropped: frozenset[str] = frozenset()
    """Connections whose ``$connect`` answered 200 but whose socket the gateway
    never held: the client had given up. No ``$disconnect`` follows."""
    connect_failed: frozenset[str] = frozenset()
    """Connections whose ``$connect`` failed (an error, a timeout): refused, with no
    ``$disconnect`` to follow, though the function may have written the lease."""
    disconnect_failed: frozenset[str] = frozenset()
    """Connections whose ``$disconnect`` failed: best effort, the sweeper's to reap."""


def start_stack(plan: Plan) -> Stack:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    profile = os.environ.get("BENCH_PROFILE_TO")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.presence_steps",
            "--serve",
            str(plan.heartbeat_seconds),
            str(plan.stale_after_seconds),
            str(plan.grace_seconds),
            str(plan.provisioned_workers),
        ],
        stdout=subprocess.PIPE,
        # BENCH_PROFILE_TO: where the child's profile (its stderr) goes.
        stderr=open(profile, "w") if profile else subprocess.STDOUT,  # noqa: SIM115
        text=True,
        cwd=ROOT,
        env=env,
    )
    lines: list[str] = []
    ready: list[re.Match[str]] = []
    found = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            # The stack's own output is kept (bounded) for a failure's message.
            lines.append(line)
            del lines[:-200]
            match = READY.match(line)
            if match:
                ready.append(match)
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(START_TIMEOUT) or not ready:
        process.kill()
        raise RuntimeError(f"the stack did not start: {lines[-20:]}")
    details = json.loads(ready[0].group(2))
    return Stack(
        process,
        ready[0].group(1),
        details["backend"],
        int(details["owner_id"]),
        int(details["agent_id"]),
        next(m.group(1) for line in lines if (m := TOKEN_LINE.match(line))),
        next(m.group(1) for line in lines if (m := SECRET_LINE.match(line))),
        next(line.removeprefix(STATS_PREFIX) for line in lines if line.startswith(STATS_PREFIX)),
        details["moto"],
        lines,
    )


# -- the clients -------------------------------------------------------------------


@dataclass
class Agent:
    agent_id: int
    slots: int
    open: set[str] = field(default_factory=set)

    def free_session(self) -> str | None:
        for index in range(self.slots):
            if f"s{index}" not in self.open:
                return f"s{index}"
        return None


@dataclass
class StepRecord:
    """What the clients saw during one step."""

    name: str
    rate: float
    arrivals: int = 0
    pending: int = 0
    """Connects still waiting for their answer."""
    connected: int = 0
    no_slot: int = 0
    connect: list[float] = field(default_factory=list)
    close: list[float] = field(default_factory=list)
    heartbeats_sent: int = 0
    disconnects: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    error_frames: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class Load:
    """The sessions, their agents, and the step they count in."""

    def __init__(self, stack: Stack, plan: Plan) -> None:
        self.stack = stack
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.step = StepRecord("setup", 0.0)
        self.hold = asyncio.Event()
        self.release = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.connecting = 0
        """Connects waiting for their answer, whatever step they began in."""

    def arrive(self, agents: Sequence[Agent]) -> None:
        record = self.step
        record.arrivals += 1
        candidates = [agent for agent in agents if agent.free_session() is not None]
        if not candidates:
            record.no_slot += 1
            return
        agent = self.rng.choice(candidates)
        session_id = agent.free_session()
        assert session_id is not None
        agent.open.add(session_id)
        lifetime = self.rng.uniform(*self.plan.lifetime)
        task = asyncio.get_running_loop().create_task(self.session(agent, session_id, lifetime))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def session(self, agent: Agent, session_id: str, lifetime: float) -> None:
        import websockets

        record = self.step
        record.pending += 1
        self.connecting += 1
        query = f"agent_id={agent.agent_id}&session_id={session_id}&token={self.stack.token}"
        started = time.perf_counter()
        try:
            socket = await websockets.connect(
                f"{self.stack.ws_url}?{query}",
                open_timeout=CONNECT_TIMEOUT,
                ping_interval=None,
                close_timeout=CLOSE_TIMEOUT,
            )
        except Exception as error:
            record.failures[f"connect: {type(error).__name__}"] += 1
            agent.open.discard(session_id)
            return
        finally:
            record.pending -= 1
            self.connecting -= 1
        record.connect.append(time.perf_counter() - started)
        record.connected += 1
        reader = asyncio.get_running_loop().create_task(self.read(socket))
        loop = asyncio.get_running_loop()
        end = loop.time() + lifetime
        next_heartbeat = loop.time() + self.plan.heartbeat_seconds
        try:
            while not self.release.is_set():
                now = loop.time()
                if now >= end and not self.hold.is_set():
                    break
                until = next_heartbeat if self.hold.is_set() else min(next_heartbeat, end)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), max(0.0, until - now))
                if loop.time() >= next_heartbeat and not self.release.is_set():
                    await asyncio.wait_for(socket.send('{"action": "heartbeat"}'), CLOSE_TIMEOUT)
                    self.step.heartbeats_sent += 1
                    next_heartbeat += self.plan.heartbeat_seconds
            closing = self.step
            started = time.perf_counter()
            await socket.close()
            closing.close.append(time.perf_counter() - started)
            closing.disconnects += 1
        except Exception as error:
            self.step.failures[f"session: {type(error).__name__}"] += 1
            socket.transport.abort()
        finally:
            reader.cancel()
            agent.open.discard(session_id)

    async def read(self, socket: Any) -> None:
        """Every frame the gateway sends: an error message names a failed or timed out
        invocation (API Gateway's 'Endpoint request timed out' is a client timeout)."""
        with contextlib.suppress(Exception):
            async for raw in socket:
                try:
                    message = json.loads(raw).get("message")
                except (ValueError, AttributeError):
                    continue
                if isinstance(message, str):
                    self.step.error_frames[message] += 1

    async def settle_clients(self) -> None:
        """Until every connect is answered or timed out: only then is each agent's
        ``open`` what its clients hold."""
        while self.connecting:
            await asyncio.sleep(0.1)

    async def run_step(self, record: StepRecord, agents: Sequence[Agent], seconds: float) -> None:
        self.step = record
        loop = asyncio.get_running_loop()
        started = loop.time()
        end = started + seconds
        arrival = started + self.rng.expovariate(record.rate)
        while arrival < end:
            await asyncio.sleep(max(0.0, arrival - loop.time()))
            self.arrive(agents)
            arrival += self.rng.expovariate(record.rate)
        await asyncio.sleep(max(0.0, end - loop.time()))
        # The step's connects are answered (or time out) before it is judged; the
        # step's window (its server-side counts too) includes that wait.
        while record.pending and loop.time() < end + CONNECT_TIMEOUT + 1:
            await asyncio.sleep(0.1)
        record.seconds = loop.time() - started


# -- the report --------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@dataclass
class StepResult:
    record: StepRecord
    requests: dict[str, int]
    """``function|service:Operation`` -> requests in the step."""
    invocations: dict[str, int]
    durations: dict[str, list[float]]
    errors: dict[str, int]
    moto_busy: float
    busy_by_operation: dict[str, float]
    moto_cpu: float
    stack_cpu: float
    moto_process_cpu: float
    """CPU seconds of moto's process: its requests, and its server's HTTP work."""
    worker_cpu: float
    stream_records: int = 0
    cold_starts: dict[str, int] = field(default_factory=dict)
    """Workers started in the step, by function (Lambda's cold starts)."""
    past_knee: bool = False
    table: list[dict[str, Any]] = field(default_factory=list)
    """The stack's table as the step left it (DynamoDB JSON items)."""
    probe: list[Any] = field(default_factory=list)
    """moto_capacity.Capacity list, probed on a copy of ``table``."""

    @classmethod
    def between(
        cls, record: StepRecord, before: dict[str, Any], after: dict[str, Any]
    ) -> StepResult:
        def delta(name: str) -> dict[str, int]:
            return {
                k: v - before[name].get(k, 0)
                for k, v in after[name].items()
                if v - before[name].get(k, 0)
            }

        durations = {
            name: values[len(before["durations"].get(name, [])) :]
            for name, values in after["durations"].items()
        }
        return cls(
            record,
            delta("requests"),
            delta("invocations"),
            durations,
            delta("errors"),
            after["moto_busy"] - before["moto_busy"],
            {
                op: busy - before["busy_by_operation"].get(op, 0.0)
                for op, busy in after["busy_by_operation"].items()
                if busy - before["busy_by_operation"].get(op, 0.0) > 0
            },
            after["moto_cpu"] - before["moto_cpu"],
            after["stack_cpu"] - before["stack_cpu"],
            after["moto_process_cpu"] - before["moto_process_cpu"],
            max(0.0, after["worker_cpu"] - before["worker_cpu"]),
            int((after.get("table_items") or {}).get("stream_records") or 0),
            delta("cold_starts"),
        )

    def moto_ms(self) -> list[tuple[str, float, float]]:
        """(operation, busy seconds, ms per request) by operation, busiest first."""
        counts: Counter[str] = Counter()
        for key, n in self.requests.items():
            counts[key.split("|", 1)[1]] += n
        return sorted(
            (
                (op, busy, 1000 * busy / counts[op] if counts[op] else 0.0)
                for op, busy in self.busy_by_operation.items()
            ),
            key=lambda row: -row[1],
        )

    def calls(self, function: str) -> int:
        return sum(n for key, n in self.invocations.items() if key.split("|", 1)[0] == function)

    def ok(self, function: str) -> int:
        return self.invocations.get(f"{function}|ok", 0)

    def requests_of(self, functions: Sequence[str]) -> Counter[str]:
        found: Counter[str] = Counter()
        for key, n in self.requests.items():
            who, operation = key.split("|", 1)
            if who in functions:
                found[operation] += n
        return found

    def per_operation(self, functions: Sequence[str], operations: int) -> float | None:
        """DynamoDB requests per operation of these functions."""
        if not operations:
            return None
        dynamodb = sum(
            n for op, n in self.requests_of(functions).items() if op.startswith("dynamodb:")
        )
        return dynamodb / operations

    @property
    def mix(self) -> dict[str, int]:
        """The routes' requests by operation (the stack's background excluded)."""
        routes = {key.split("|", 1)[0] for key in self.requests} - set(BACKGROUND)
        return {op.split(":", 1)[1]: n for op, n in self.requests_of(sorted(routes)).items()}

    @property
    def background_busy(self) -> float:
        """moto's busy seconds in the step spent on the background's requests (the
        sweeper, redelivery, grace cancellations, the backend, the stack's stream and
        schedule polling): each operation's busy time shared by its requests' senders."""
        by_operation: Counter[str] = Counter()
        background: Counter[str] = Counter()
        for key, n in self.requests.items():
            who, operation = key.split("|", 1)
            by_operation[operation] += n
            if who in BACKGROUND:
                background[operation] += n
        return sum(
            busy * background[operation] / by_operation[operation]
            for operation, busy in self.busy_by_operation.items()
            if by_operation[operation]
        )

    @property
    def served(self) -> float:
        """The routes' requests per second over the step."""
        return sum(self.mix.values()) / max(self.record.seconds, 1e-9)

    @property
    def all_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def timeouts(self) -> int:
        connect = sum(n for k, n in self.record.failures.items() if "Timeout" in k)
        return connect + self.record.error_frames.get("Endpoint request timed out", 0)


@dataclass
class Result:
    plan: Plan
    steps: list[StepResult]
    busy: StepResult | None
    probes: list[list[Any]]
    """moto_capacity.Capacity lists: before and after."""
    table_items: int
    held: Findings
    closed: Findings
    agents: int
    loads: list[str]
    failed_invocations: dict[str, int] = field(default_factory=dict)
    """``function|outcome`` -> invocations over the whole run that did not answer ok."""

    def capacity_range(self, step: StepResult) -> tuple[float, float]:
        """What moto alone serves for the step's mix, on the tables before and after."""
        from bench import moto_capacity

        found = [moto_capacity.mix_capacity(probe, step.mix) for probe in self.probes]
        return min(found), max(found)

    def capacity_bounds(self, step: StepResult) -> tuple[float, float]:
        """What moto alone serves for the step's mix on the table as the step found
        it (the previous step's, or the idle one before the first) and as it left it:
        the table grows during a step as its sessions arrive, so the step's own
        capacity lies between the two."""
        from bench import moto_capacity

        end = moto_capacity.mix_capacity(step.probe, step.mix)
        index = next((n for n, each in enumerate(self.steps) if each is step), None)
        if index is None:
            return end, end  # the busy agent's step starts from an emptied table
        found = self.steps[index - 1].probe if index else self.probes[0]
        return moto_capacity.mix_capacity(found, step.mix), end

    def fraction(self, step: StepResult) -> tuple[float, float]:
        """The step's route requests over moto's capacity for them: (low, high)."""
        bounds = [capacity for capacity in self.capacity_bounds(step) if capacity]
        if not bounds:
            return 0.0, 0.0
        return step.served / max(bounds), step.served / min(bounds)

    @property
    def knee(self) -> StepResult | None:
        """The last step below the knee."""
        below = [step for step in self.steps if not step.past_knee]
        return below[-1] if below else None


def goals(result: Result) -> str:
    """Issue 16's three goals, each met or not, with the figure that decides it."""
    knee = result.knee
    parts: list[str] = []
    if knee is None:
        parts.append("No step was below the knee: the capacity goal cannot be met.")
    else:
        low, high = result.capacity_range(knee)
        start, end = result.capacity_bounds(knee)
        served = knee.served
        share = result.fraction(knee)
        met = share[0] >= GOAL_SHARE
        parts.append(
            f"Capacity: at {knee.record.name}, the last step below the knee, the routes "
            f"sent {served:.1f} requests/s, {share[0]:.0%}-{share[1]:.0%} of moto's "
            f"capacity for that mix on the table as the step found it and as it left it "
            f"({start:.1f} and {end:.1f}/s; on the idle tables before and after the "
            f"steps {low:.1f}-{high:.1f}/s, {served / high if high else 0:.0%}-"
            f"{served / low if low else 0:.0%}); moto was busy "
            f"{knee.moto_busy / max(knee.record.seconds, 1e-9):.0%} of the step inside "
            f"the stack: {'met' if met else 'not met'} (goal {GOAL_SHARE:.0%}, the whole "
            f"range)."
        )
        if not met:
            parts.append(short_of_capacity(result, knee, share))
    below_timeouts = sum(step.timeouts for step in result.steps if not step.past_knee)
    parts.append(
        f"Client timeouts below the knee: {below_timeouts} "
        f"({'met' if not below_timeouts else 'not met'})."
    )
    checks = (result.held, result.closed)
    violations = sum(len(found.protocol) for found in checks)
    unexplained = sum(len(found.unexplained) for found in checks)
    unchecked = [note for found in checks for note in found.idle if "not idle" in note]
    met = not violations and not unexplained and not unchecked
    parts.append(
        f"Invariant violations (protocol, checked on the idle stack against its open "
        f"sockets): {violations}; client/server disagreements no abandoned connect "
        f"explains: {unexplained}"
        + (f"; {'; '.join(unchecked)}" if unchecked else "")
        + f" ({'met' if met else 'not met'}). Disagreements from connects the clients "
        f"abandoned at their {CONNECT_TIMEOUT:g} s timeout (not violations: the server "
        f"completed them; the protocol's staleness and sweeper reap what they left): "
        f"{sum(len(found.abandoned) for found in checks)}; leases left by a failed "
        f"`$connect` or `$disconnect` (no `$disconnect` removes them: the sweeper's): "
        f"{sum(len(found.missed) for found in checks)}."
    )
    return " ".join(parts)


def short_of_capacity(result: Result, knee: StepResult, share: tuple[float, float]) -> str:
    """By how much the capacity goal is missed, and what the next step (past the
    knee) shows about why: the load it offered, and moto's lock held beyond its CPU."""
    seconds = max(knee.record.seconds, 1e-9)
    text = (
        f"Short by {max(GOAL_SHARE - share[1], 0) * 100:.0f}-"
        f"{(GOAL_SHARE - share[0]) * 100:.0f} percentage points. Of that busy time, "
        f"{knee.background_busy / seconds:.0%} of the step went to the background's "
        f"requests (the sweeper, redelivery, grace cancellations, the stack's stream and "
        f"schedule polling), which the fraction does not count."
    )
    index = result.steps.index(knee)
    if index + 1 >= len(result.steps):
        return text
    past = result.steps[index + 1]
    seconds = max(past.record.seconds, 1e-9)
    background = past.background_busy / seconds
    low, high = result.fraction(past)
    served = past.served
    load = result.loads[index + 1] if index + 1 < len(result.loads) else "?"
    return text + (
        f" The next step, {past.record.name}, sent {served:.1f} requests/s, "
        f"{low:.0%}-{high:.0%} of moto's capacity for its mix, but "
        f"past the knee ({past.timeouts} client timeouts, connect p99 "
        f"{_ms(quantile(past.record.connect, 0.99))} ms): moto was busy "
        f"{past.moto_busy / seconds:.0%} of it ({background:.0%} on the background) and on "
        f"a core {past.moto_cpu / seconds:.0%}, "
        f"its one-request lock held while its thread waited for a core (load average "
        f"{load} at the step's start, {os.cpu_count()} cores)."
    )


def check_knee(step: StepResult, first: StepResult) -> bool:
    record = step.record
    if step.timeouts or record.failures:
        return True
    arrived = record.arrivals - record.no_slot
    if arrived and record.connected < KNEE_ARRIVED_SHARE * arrived:
        return True
    base, p99 = quantile(first.record.connect, 0.99), quantile(record.connect, 0.99)
    return base is not None and p99 is not None and p99 > KNEE_P99_FACTOR * base and p99 > 0.5


@dataclass
class Findings:
    """One check's outcome, by kind (see the module's docstring)."""

    protocol: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    """Leases a failed ``$connect`` or ``$disconnect`` left (no ``$disconnect`` will
    remove them: the sweeper reaps them once stale)."""
    idle: list[str] = field(default_factory=list)
    """How long the check waited for the idle stack, or that it never was."""

    def add(self, other: Findings) -> None:
        self.protocol += other.protocol
        self.abandoned += other.abandoned
        self.unexplained += other.unexplained
        self.missed += other.missed
        self.idle += other.idle

    def describe(self) -> str:
        def listed(items: list[str]) -> str:
            more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
            return f"{len(items)}: " + "; ".join(items[:5]) + more if items else "none"

        return (
            f"{', '.join(self.idle) or 'no check'}; protocol violations "
            f"{listed(self.protocol)}; disagreements from abandoned connects "
            f"{listed(self.abandoned)}; leases of failed connects or disconnects "
            f"{listed(self.missed)}; "
            f"unexplained disagreements {listed(self.unexplained)}"
        )


def check_agent(
    agent_id: int,
    presence: dict[str, Any],
    server: ServerView,
    client_open: set[str],
    heartbeating: bool,
) -> Findings:
    """One agent's presence (the backend's ``presence`` answer) against the idle
    stack's sockets and what its clients hold. ``heartbeating``: the clients hold
    their sessions open and heartbeat, so each must have a live lease."""
    found = Findings()
    name = f"agent {agent_id}"
    routing = bool(presence.get("routing"))
    leases = {str(lease["connection_id"]): lease for lease in presence.get("leases", [])}
    sockets = {cid: session for cid, (agent, session) in server.open.items() if agent == agent_id}
    # Invariant 1 (docs/ARCHITECTURE.md): routing on implies some lease; a live
    # lease implies routing on.
    if routing and not leases:
        found.protocol.append(f"{name}: routed without a lease")
    live = [cid for cid, lease in leases.items() if lease.get("live")]
    if live and not routing:
        found.protocol.append(f"{name}: live lease {live[0]} but not routed")
    for cid, lease in leases.items():
        if cid in sockets:
            continue
        session = lease.get("session_id")
        if cid in server.dropped:
            found.abandoned.append(
                f"{name}: lease {session} of a connect its client abandoned "
                f"({'live' if lease.get('live') else 'stale'}, awaiting the sweeper)"
            )
        elif cid in server.connect_failed:
            found.missed.append(f"{name}: lease {session} of a failed $connect")
        elif cid in server.disconnect_failed:
            found.missed.append(f"{name}: lease {session} of a failed $disconnect")
        else:
            # The gateway closed it and its $disconnect answered: the lease outlived it.
            found.protocol.append(f"{name}: lease {session} outlives its connection")
    for session in sorted(client_open):
        held = [cid for cid, open_session in sockets.items() if open_session == session]
        if not held:
            found.unexplained.append(f"{name}: client holds {session}, the gateway does not")
        elif heartbeating and not any(leases.get(cid, {}).get("live") for cid in held):
            found.protocol.append(f"{name}: session {session} open and heartbeating, no live lease")
    # A socket the client gave up on, or one more than the one it holds (it gave
    # up, then reused the session for a connect that succeeded).
    for session, count in Counter(sockets.values()).items():
        extra = count - (1 if session in client_open else 0)
        found.abandoned += [
            f"{name}: the gateway holds a socket of {session} its client gave up on"
        ] * extra
    if routing and leases and all(cid in server.dropped for cid in leases):
        found.abandoned.append(f"{name}: routed only by abandoned connects' leases")
    return found


def check_state(stack: Stack, agents: Sequence[Agent], heartbeating: bool, label: str) -> Findings:
    """Wait for the idle stack, then check every agent against its open sockets."""
    open_now = sum(len(agent.open) for agent in agents) if not heartbeating else None
    idle = stack.wait_idle(expect_open=open_now)
    server = stack.connections()

    def check(agent: Agent) -> Findings:
        presence = stack.command({"op": "presence", "agent_id": agent.agent_id})
        return check_agent(agent.agent_id, presence, server, set(agent.open), heartbeating)

    found = Findings(
        idle=[
            f"{label}: idle after {idle.seconds:.0f} s"
            if idle.reached
            else f"{label}: not idle after {idle.seconds:.0f} s ({idle.stats['in_flight']} "
            f"invocations in flight, {idle.stats['queued_frames']} frames queued)"
        ]
    )
    with ThreadPoolExecutor(BACKEND_THREADS) as pool:
        for each in pool.map(check, agents):
            found.add(each)
    return found


def create_agents(stack: Stack, count: int, seed: int) -> list[Agent]:
    rng = random.Random(seed)

    def create(index: int) -> int:
        answer = stack.command(
            {"op": "create_agent", "owner_id": stack.owner_id, "name": f"load-{index}"},
            "/_admin",
        )
        return int(answer["agent_id"])

    with ThreadPoolExecutor(BACKEND_THREADS) as pool:
        ids = list(pool.map(create, range(count)))
    return [Agent(agent_id, rng.choice((2, 3))) for agent_id in ids]


def load_now() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min)"


async def _drive(
    stack: Stack, plan: Plan, agents: list[Agent]
) -> tuple[list[StepResult], StepResult | None, Findings, Findings, list[str]]:
    from bench import moto_capacity

    load = Load(stack, plan)
    steps: list[StepResult] = []
    loads: list[str] = []
    for rate in plan.rates:
        record = StepRecord(f"{rate:g}/s", rate)
        before = await asyncio.to_thread(stack.stats)
        loads.append(load_now())
        await load.run_step(record, agents, plan.step_seconds)
        after = await asyncio.to_thread(stack.stats)
        step = StepResult.between(record, before, after)
        step.table = await asyncio.to_thread(moto_capacity.table_items, stack.moto)
        step.past_knee = check_knee(step, steps[0] if steps else step)
        steps.append(step)
        print(f"step {record.name}: {summary(step)}", flush=True)
        if step.past_knee:
            break
    # Held: the sessions open now stay open (heartbeating) while presence is read,
    # once every connect still in progress has its answer (or gave up).
    load.hold.set()
    load.step = StepRecord("held", 0.0)
    await load.settle_clients()
    held = await asyncio.to_thread(check_state, stack, agents, True, "held")
    # One busy agent, measured on its own: the many agents' sessions leave first.
    load.hold.clear()
    while load.tasks:
        await asyncio.gather(*list(load.tasks), return_exceptions=True)
    await asyncio.to_thread(stack.wait_idle, 0)
    busy_result: StepResult | None = None
    busy_agent = Agent(stack.agent_id, plan.busy_sessions)
    if plan.busy_sessions:
        record = StepRecord(f"busy agent, {plan.busy_rate:.2g}/s", plan.busy_rate)
        before = await asyncio.to_thread(stack.stats)
        await load.run_step(record, [busy_agent], plan.step_seconds)
        after = await asyncio.to_thread(stack.stats)
        busy_result = StepResult.between(record, before, after)
        busy_result.table = await asyncio.to_thread(moto_capacity.table_items, stack.moto)
        print(f"step {record.name}: {summary(busy_result)}", flush=True)
        load.hold.set()
        load.step = StepRecord("held", 0.0)
        await load.settle_clients()
        held.add(await asyncio.to_thread(check_state, stack, [busy_agent], True, "busy, held"))
    load.release.set()
    while load.tasks:
        await asyncio.gather(*list(load.tasks), return_exceptions=True)
    closed = await asyncio.to_thread(check_state, stack, [*agents, busy_agent], False, "closed")
    return steps, busy_result, held, closed, loads


def summary(step: StepResult) -> str:
    record = step.record
    p99 = quantile(record.connect, 0.99)
    return (
        f"{record.connected}/{record.arrivals} connected, connect p99 "
        f"{p99 * 1000 if p99 is not None else float('nan'):.0f} ms, heartbeats "
        f"{step.ok(HEARTBEAT_FUNCTION)}/{record.heartbeats_sent}, {step.all_requests} "
        f"requests, moto busy {step.moto_busy / max(record.seconds, 1e-9):.0%} "
        f"(CPU {step.moto_cpu / max(record.seconds, 1e-9):.0%}), stream "
        f"{step.stream_records}, "
        f"timeouts {step.timeouts}, failures {dict(record.failures)}, cold starts "
        f"{step.cold_starts}, server p99 ms "
        + ", ".join(
            f"{name} {_ms(quantile(step.durations.get(name, []), 0.99))}"
            for name in CONNECT_FUNCTIONS
        )
        + "; moto ms/request: "
        + ", ".join(f"{op} {ms:.1f}" for op, _, ms in step.moto_ms()[:5])
    )


def run(plan: Plan) -> Result:
    from bench import moto_capacity

    stack = start_stack(plan)
    try:
        agents = create_agents(stack, plan.agents, plan.seed)
        stack.wait_idle(0)
        # Probed on a copy of the stack's table as it is now (the stack idle).
        copied = moto_capacity.table_items(stack.moto)
        probes = [moto_capacity.measure(plan.probe_seconds, copied=copied)]
        steps, busy, held, closed, loads = asyncio.run(_drive(stack, plan, agents))
        failed = {
            key: n for key, n in stack.stats()["invocations"].items() if not key.endswith("|ok")
        }
        copied = moto_capacity.table_items(stack.moto)
    finally:
        stack.stop()
    # After: the stack stopped, so the probes have the machine the stack had.
    probes.append(moto_capacity.measure(plan.probe_seconds, copied=copied))
    for step in [*steps, *([busy] if busy else [])]:
        step.probe = moto_capacity.measure(plan.probe_seconds, copied=step.table)
    return Result(plan, steps, busy, probes, len(copied), held, closed, len(agents), loads, failed)


# -- markdown ----------------------------------------------------------------------


def cold_starts(result: Result) -> str:
    """Workers started during each step, by function, or none."""
    steps = [*result.steps, *([result.busy] if result.busy else [])]
    started = [
        f"{step.record.name}: "
        + ", ".join(f"{name} {n}" for name, n in sorted(step.cold_starts.items()))
        for step in steps
        if step.cold_starts
    ]
    return "; ".join(started) or "none"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _latency(values: Sequence[float]) -> str:
    return f"{_ms(quantile(values, 0.5))} / {_ms(quantile(values, 0.99))}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def step_row(result: Result, step: StepResult) -> str:
    record = step.record
    seconds = max(record.seconds, 1e-9)
    low, high = result.capacity_range(step)
    start, end = result.capacity_bounds(step)
    share = result.fraction(step)
    served = step.served
    connects = step.ok("ConnectFunction")
    heartbeats = step.calls(HEARTBEAT_FUNCTION)
    disconnects = step.calls(DISCONNECT_FUNCTION)
    fraction = f"{share[0]:.0%}-{share[1]:.0%}" if end else "-"
    return (
        f"| {record.name} | {record.connected}/{record.arrivals - record.no_slot} "
        f"| {_latency(record.connect)} "
        f"| {_latency(step.durations.get(HEARTBEAT_FUNCTION, []))} "
        f"| {_latency(step.durations.get(DISCONNECT_FUNCTION, []))} "
        f"| {_ratio(step.per_operation(CONNECT_FUNCTIONS, connects))} "
        f"/ {_ratio(step.per_operation((HEARTBEAT_FUNCTION,), heartbeats))} "
        f"/ {_ratio(step.per_operation((DISCONNECT_FUNCTION,), disconnects))} "
        f"| {step.ok(HEARTBEAT_FUNCTION)}/{record.heartbeats_sent} "
        f"| {step.timeouts} | {sum(record.failures.values())} "
        f"| {served:.1f} | {start:.1f}-{end:.1f} ({low:.1f}-{high:.1f}) | {fraction} "
        f"| {step.moto_busy / seconds:.0%} "
        f"| {step.stack_cpu / seconds:.2f} / {step.moto_process_cpu / seconds:.2f} "
        f"/ {step.worker_cpu / seconds:.2f} "
        f"| {'yes' if step.past_knee else 'no'} |"
    )


HEADER = (
    "| step | connected / arrived | connect p50 / p99 ms (client) "
    "| heartbeat p50 / p99 ms (server) | disconnect p50 / p99 ms (server) "
    "| DynamoDB requests per connect / heartbeat / disconnect "
    "| heartbeats processed / sent | client timeouts | client failures "
    "| route requests/s | moto capacity for the mix, /s: the step's table found-left "
    "(idle before-after) "
    "| fraction of moto "
    "| moto busy (in the stack) | CPU cores: stack / moto / workers | past the knee |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
    "| ---: | ---: | --- |"
)


def markdown(result: Result) -> str:
    plan = result.plan
    lines = [HEADER]
    lines += [step_row(result, step) for step in result.steps]
    if result.busy is not None:
        lines.append(step_row(result, result.busy))
    lines += ["", "moto's raw capacity, requests per second (before / after the steps):", ""]
    lines += ["| request | before | after |", "| --- | ---: | ---: |"]
    for before, after in zip(result.probes[0], result.probes[-1], strict=True):
        lines.append(f"| {before.operation} | {before.per_second:.0f} | {after.per_second:.0f} |")
    mixes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    by_function: dict[str, Counter[str]] = {}
    for step in [*result.steps, *([result.busy] if result.busy else [])]:
        mixes.update(step.mix)
        errors.update(step.errors)
        for key, n in step.requests.items():
            who, operation = key.split("|", 1)
            by_function.setdefault(who, Counter())[operation] += n
    lines += ["", "Requests by sender over the steps (server-side, where moto serves them):", ""]
    lines += ["| sender | requests |", "| --- | --- |"]
    for who, counts in sorted(by_function.items(), key=lambda item: -sum(item[1].values())):
        listed = ", ".join(f"{op} {n}" for op, n in counts.most_common())
        lines.append(f"| {who} | {sum(counts.values())}: {listed} |")
    lines += [
        "",
        f"Table items during the run: {result.table_items:,}. Agents: {result.agents} "
        f"(2-3 session slots each) plus the busy one ({plan.busy_sessions} slots). "
        f"Load average at each step's start: {'; '.join(result.loads)}. "
        f"{plan.provisioned_workers} workers of each of "
        f"{', '.join(PROVISIONED_FUNCTIONS)} were started before the steps (provisioned "
        f"concurrency); cold starts in the steps: {cold_starts(result)}.",
        "",
        "The routes' requests over the whole run: "
        + (", ".join(f"{op} {n}" for op, n in mixes.most_common()) or "none")
        + ". Error answers: "
        + (", ".join(f"{op} {n}" for op, n in errors.most_common()) or "none")
        + ". Invocations that did not answer ok, over the whole run: "
        + (
            ", ".join(
                f"{key.replace('|', ' ')} {n}"
                for key, n in sorted(result.failed_invocations.items())
            )
            or "none"
        )
        + ".",
        "",
        f"Invariants while held: {result.held.describe()}. After every socket closed: "
        f"{result.closed.describe()}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=list(Plan.rates))
    parser.add_argument("--step-seconds", type=float, default=Plan.step_seconds)
    parser.add_argument("--lifetime", type=float, nargs=2, default=list(Plan.lifetime))
    parser.add_argument("--busy-sessions", type=int, default=Plan.busy_sessions)
    parser.add_argument(
        "--provisioned-workers",
        type=int,
        default=Plan.provisioned_workers,
        metavar="N",
        help="workers started before the steps for each function a step invokes "
        f"(default: {Plan.provisioned_workers}; 1 leaves the rest to cold starts)",
    )
    parser.add_argument("--serve", type=int, nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(*args.serve)
    plan = Plan(
        rates=tuple(args.rates),
        step_seconds=args.step_seconds,
        lifetime=(args.lifetime[0], args.lifetime[1]),
        busy_sessions=args.busy_sessions,
        provisioned_workers=args.provisioned_workers,
    )
    print(markdown(run(plan)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
