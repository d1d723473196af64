"""The chaos run: dispatches through the local stack while its gateway drops posts
after answering 200, crashes and closes sessions at random, and holds handshakes
open, with the reference client serving the agent. Shared by the small test in the
suite and ``make chaos`` (CHAOS_DISPATCHES=500)."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agent_channel_dev.backend_transport import LocalTransport
from agent_channel_dev.client import AgentClient, Backoff, ClientConfig, Message
from tests.e2e.stack import DevServer, start_dev_server

FAULTS = "drop=0.1,crash=0.2,close=0.2,handshake=0.05,seed=11"
CUT_TIMEOUT = 30.0
"""How long the run waits for the faults' first cut before the second half."""
REDELIVERY_SECONDS = 2
GRACE_SECONDS = 30
"""Longer than any reconnect here: the chaos is about delivery, not departures."""
SETTLE_TIMEOUT = 180.0
TRANSIENT_RETRIES = 10


def chaos_server() -> DevServer:
    return start_dev_server(
        "--grace-seconds",
        str(GRACE_SECONDS),
        "--parameter",
        f"RedeliverySeconds={REDELIVERY_SECONDS}",
        environment={"AGENT_CHANNEL_FAULTS": FAULTS},
    )


class CountingClient(AgentClient):
    """The reference client, counting what reaches it before de-duplication."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: Counter[str] = Counter()

    async def _handle(self, message: Message) -> None:
        if message.get("type") == "dispatch":
            if message.get("redelivery"):
                self.arrivals["redelivered"] += 1
            elif message.get("resync"):
                self.arrivals["resynced"] += 1
            else:
                self.arrivals["numbered"] += 1
        await super()._handle(message)


@dataclass
class ChaosReport:
    dispatches: int
    handled: Counter[int] = field(default_factory=Counter)
    dispatched_at: dict[int, float] = field(default_factory=dict)
    handled_at: dict[int, float] = field(default_factory=dict)
    not_routable_retries: int = 0
    transient_retries: int = 0
    arrivals: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    connections: int = 0
    final_status: Counter[str] = field(default_factory=Counter)

    def latencies(self) -> list[float]:
        return sorted(
            self.handled_at[task] - self.dispatched_at[task]
            for task in self.handled_at
            if task in self.dispatched_at
        )

    def percentile(self, fraction: float) -> float:
        values = self.latencies()
        if not values:
            return float("nan")
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]

    def summary(self) -> str:
        return (
            f"dispatches {self.dispatches}, handled {len(self.handled)} "
            f"(max per task {max(self.handled.values(), default=0)}), "
            f"final {dict(self.final_status)}, connections {self.connections}, "
            f"arrivals {dict(self.arrivals)}, duplicates dropped {self.duplicates}, "
            f"dispatch retries (agent not routable) {self.not_routable_retries}, "
            f"backend retries (stack overloaded) {self.transient_retries}, "
            f"dispatch-to-ack p50 {self.percentile(0.5) * 1000:.0f} ms "
            f"p99 {self.percentile(0.99) * 1000:.0f} ms"
        )


def run_chaos(dev: DevServer, dispatches: int) -> ChaosReport:
    agent_id, topic_id = dev.new_agent("chaos")
    backend = LocalTransport(dev.backend, secret=dev.secret)
    report = ChaosReport(dispatches)
    lock = threading.Lock()

    def claim(task_id: int, generation: int) -> None:
        call({"op": "claim_reply", "task_id": task_id, "generation": generation})

    async def on_dispatch(message: Message) -> None:
        task_id = int(message["task_id"])
        with lock:
            report.handled[task_id] += 1
            report.handled_at.setdefault(task_id, time.monotonic())
        # The agent's work, then its reply; off the client's reading loop.
        asyncio.get_running_loop().run_in_executor(None, claim, task_id, int(message["generation"]))

    client = CountingClient(
        ClientConfig(
            url=dev.ws_url,
            token=dev.token,
            agent_id=agent_id,
            session_id="chaos",
            heartbeat_seconds=1,
            backoff=Backoff(first=0.2, cap=1.0),
            stable_after_seconds=2,
        ),
        on_dispatch=on_dispatch,
    )

    def call(command: dict[str, Any]) -> dict[str, Any]:
        """A backend command; an internal error of the overloaded local stack (its
        embedded moto answers some requests 500 under load) is retried."""
        for _attempt in range(TRANSIENT_RETRIES):
            answer = backend.call(command)
            if answer["ok"] or answer["error"] not in ("internal_error", "function_error"):
                return answer
            report.transient_retries += 1
            time.sleep(0.5)
        raise AssertionError(f"{command['op']} kept failing: {answer}")

    def dispatch_all() -> None:
        for n in range(dispatches):
            if n == dispatches // 2:
                wait_for_a_cut()
            created = call(
                {
                    "op": "create_task",
                    "agent_id": agent_id,
                    "topic_id": topic_id,
                    "content": f"chaos {n}",
                    "start": True,
                }
            )
            assert created["ok"], created
            task_id = int(created["task_id"])
            while True:
                started = time.monotonic()
                answer = call({"op": "dispatch", "task_id": task_id})
                if answer["ok"]:
                    with lock:
                        report.dispatched_at[task_id] = started
                    break
                assert answer["error"] == "agent_not_routable", answer
                report.not_routable_retries += 1
                time.sleep(0.2)

    def wait_for_a_cut() -> None:
        """The faults cut a socket about every 2.5 s, at random: a run quicker than
        that could dispatch everything before the first cut. Half the dispatches go
        out only once the client has had to reconnect."""
        deadline = time.monotonic() + CUT_TIMEOUT
        while client.connections < 2 and time.monotonic() < deadline:
            time.sleep(0.1)

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(client.run(stop))
        await asyncio.wait_for(client.connected.wait(), 30)
        await asyncio.to_thread(dispatch_all)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while len(report.handled) < dispatches and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(running, 30)

    asyncio.run(scenario())
    report.arrivals = client.arrivals
    report.duplicates = client.duplicates
    report.connections = client.connections
    # Every claim has been sent; let the last ones land, then read every task.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = backend.call({"op": "list_tasks", "agent_id": agent_id})
        report.final_status = Counter(task["status"] for task in listed["tasks"])
        if report.final_status.get("done", 0) >= len(report.handled):
            break
        time.sleep(0.5)
    return report
