"""Fan-out benchmark: one stream of N connections, 20 ms per post_to_connection,
the clients side by side: boto3's, the lean poster (``delivery.poster``), the
poster with X-Ray tracing on, and awscrt's HTTP client (``bench/crt_poster.py``).

    nice .venv/bin/python -m bench.fanout [--sizes N...] [--latency-ms L] [--workers W]
        [--repeat R] [--clients LABEL...]

The @connections API is the project's local server (real HTTP on 127.0.0.1,
latency injected per request, in a child process so that its event loop does not
compete with the posting threads for the interpreter lock). For each size, in one
run, interleaved (boto3, stdlib, stdlib+trace, crt, boto3, ...):

- ``deliver`` (the concurrent posting, FANOUT_WORKERS threads) through each
  client: wall-clock, and this process's CPU time per post (the server's is not
  in it);
- a sequential loop of posts through the poster, timed on the first 200
  connections and scaled to N (each post waits for the one before: linear);
- the ideal ``N x latency / workers``, and the projection to Lambda: a function
  gets CPU in proportion to its memory (1,769 MB = one vCPU), so N posts need at
  least ``N x CPU per post / (memory / 1769)`` seconds there, whatever the
  worker count, and at least ``N / POSTS_PER_SECOND`` (the rate budget).

and checks that every connection received every message. Not a test: timings
depend on the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "lib") not in sys.path:
    sys.path.insert(0, str(ROOT / "lib"))

STAGE = "bench"
SEQUENTIAL_SAMPLE = 200
LAMBDA_MB_PER_VCPU = 1769
DEPLOYED_MEMORY_MB = {"replay": 256, "backend": 1024, "fanout worker": 1024}
"""The template's default MemorySize of the functions that fan out
(ReplayMemorySize, BackendMemorySize, FanoutMemorySize)."""


def _fake_aws_environment() -> None:
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "TABLE_NAME": "agent-channel-bench",
            "POWERTOOLS_METRICS_NAMESPACE": "AgentChannelBench",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
    )
    os.environ.pop("AWS_ENDPOINT_URL", None)
    os.environ.pop("AWS_PROFILE", None)


def _serve(connection_ids: list[str], latency: float, pipe: Connection) -> None:
    """The child process: a MemorySink behind the @connections API."""
    from agent_channel_dev.local.connections_api import memory_connections_api

    with memory_connections_api(stage=STAGE, latency_seconds=latency) as (sink, server):
        for connection_id in connection_ids:
            sink.open(connection_id)
        pipe.send(server.endpoint_url(STAGE))
        while True:
            command = pipe.recv()
            if command == "stop":
                return
            # "count": how many frames each connection received, at least/at most.
            counts = [len(sink.messages(connection_id)) for connection_id in connection_ids]
            pipe.send((min(counts), max(counts)))


@dataclass
class Timing:
    label: str
    seconds: list[float] = field(default_factory=list)
    cpu_per_post: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_per_post)


@dataclass
class SizeResult:
    connections: int
    latency: float
    workers: int
    sequential_seconds: float
    timings: list[Timing]

    @property
    def ideal(self) -> float:
        return max(self.latency, self.connections * self.latency / self.workers)

    @property
    def budgeted_ideal(self) -> float:
        """The ideal under the rate budget as deployed: no faster than
        POSTS_PER_SECOND, whatever the latency and the workers."""
        from agent_channel.config import settings

        return max(self.ideal, self.connections / settings().posts_per_second)

    def projected(self, timing: Timing, memory_mb: int) -> float:
        """The bound on Lambda: latency (the ideal), CPU at the function's share of
        a vCPU, and the process's post rate budget (POSTS_PER_SECOND)."""
        from agent_channel.config import settings

        share = memory_mb / LAMBDA_MB_PER_VCPU
        return max(
            self.ideal,
            self.connections * timing.cpu_median / share,
            self.connections / settings().posts_per_second,
        )


def _measure(timing: Timing, posts: int, action: Callable[[], object]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    timing.seconds.append(time.perf_counter() - wall)
    timing.cpu_per_post.append((time.process_time() - cpu) / posts)


def boto3_client(endpoint: str, workers: int) -> Any:
    """The client fan-out used before the poster, configured as it was."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=endpoint,
        config=Config(
            max_pool_connections=max(10, workers),
            retries={"mode": "standard", "total_max_attempts": 1},
            parameter_validation=False,
        ),
    )


def _lean_poster(poster_class: str) -> Callable[[str, int], Any]:
    def build(endpoint: str, workers: int) -> Any:
        from agent_channel.config import settings
        from agent_channel.delivery import poster
        from agent_channel.delivery.rate import RateBudget
        from bench import crt_poster

        modules = {"poster": poster.ConnectionsPoster, "crt": crt_poster.CrtConnectionsPoster}
        return modules[poster_class](
            endpoint,
            region="us-east-1",
            credentials=poster.default_credentials(),
            max_idle=workers,
            # As deployed: the process's post rate budget (POSTS_PER_SECOND).
            budget=RateBudget(settings().posts_per_second, burst=workers),
        )

    return build


CLIENTS: dict[str, Callable[[str, int], Any]] = {
    "boto3": boto3_client,
    "stdlib": _lean_poster("poster"),
    "stdlib+trace": _lean_poster("poster"),
    "crt": _lean_poster("crt"),
}
"""The clients measured side by side, by label."""
TRACED = {"stdlib+trace"}
"""Run inside an X-Ray segment, tracing on (the documents go nowhere)."""


class _NullEmitter:
    """The X-Ray daemon's place: documents are serialized, as for the daemon
    (that is part of the cost), and dropped."""

    def __init__(self) -> None:
        self.documents = 0

    def send_entity(self, entity: Any) -> None:
        entity.serialize()
        self.documents += 1

    def set_daemon_address(self, address: str | None) -> None:
        pass


@cache
def _recorder() -> Any:
    """Built once: a recorder costs 0.17 s of CPU to build (its sampling rules),
    which a Lambda pays at init, not per fan-out."""
    from aws_xray_sdk.core.recorder import AWSXRayRecorder

    recorder = AWSXRayRecorder()
    recorder.configure(emitter=_NullEmitter(), sampling=False, context_missing="LOG_ERROR")
    return recorder


@contextmanager
def tracing(on: bool) -> Iterator[None]:
    """Tracing on, as in a Lambda with active tracing, for what runs inside."""
    if not on:
        yield
        return
    from aws_xray_sdk import global_sdk_config

    from agent_channel import observability

    # Restored after: the later benchmarks of the same run invoke the handlers with
    # tracing off, as the tests do (with no segment, an annotation would fail).
    was_enabled = global_sdk_config.sdk_enabled()
    global_sdk_config.set_sdk_enabled(True)
    recorder = _recorder()
    found = observability._recorder
    observability._recorder = lambda: recorder
    recorder.begin_segment("bench")
    try:
        yield
    finally:
        recorder.end_segment()
        observability._recorder = found
        global_sdk_config.set_sdk_enabled(was_enabled)


def run_size(
    connections: int, latency: float, workers: int, repeat: int, labels: list[str]
) -> SizeResult:
    from agent_channel.delivery import fanout

    _fake_aws_environment()
    ids = [f"conn-{i:05d}=" for i in range(connections)]
    data = fanout.encode({"type": "bench", "n": 1})
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=_serve, args=(ids, latency, child), daemon=True)
    server.start()
    endpoint = parent.recv()
    sent = 0
    try:
        clients = {label: CLIENTS[label](endpoint, workers) for label in labels}
        timings = {label: Timing(label) for label in clients}

        def deliver(label: str) -> Callable[[], None]:
            client = clients[label]

            def run() -> None:
                with tracing(label in TRACED):
                    result = fanout.deliver(
                        "bench", ids, data, client=client, workers=workers, on_gone=None
                    )
                assert len(result.delivered) == connections, result

            return run

        # Warm each client's pool and the server, as a warm Lambda's are.
        for label in clients:
            deliver(label)()
            sent += 1
        for _ in range(repeat):
            for label in clients:
                _measure(timings[label], connections, deliver(label))
                sent += 1
        sample = ids[:SEQUENTIAL_SAMPLE]
        sequential = clients.get("stdlib") or clients[labels[-1]]
        started = time.perf_counter()
        for connection_id in sample:
            sequential.post_to_connection(ConnectionId=connection_id, Data=data)
        sequential = (time.perf_counter() - started) * connections / len(sample)
        parent.send("count")
        least, most = parent.recv()
        # Every connection got every concurrent round; the sample one more.
        assert least == sent + (1 if connections <= SEQUENTIAL_SAMPLE else 0), (least, sent)
        assert most == sent + 1, (most, sent)
    finally:
        parent.send("stop")
        server.join(timeout=30)
    return SizeResult(connections, latency, workers, sequential, list(timings.values()))


def markdown(results: list[SizeResult]) -> str:
    lines = [
        "| connections | client | median (range) | vs ideal | vs sequential "
        "| CPU per post | projected on Lambda |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for result in results:
        for timing in result.timings:
            low, high = min(timing.seconds), max(timing.seconds)
            projections = ", ".join(
                f"{name} ({mb} MB): {result.projected(timing, mb):.2f} s"
                for name, mb in DEPLOYED_MEMORY_MB.items()
            )
            lines.append(
                f"| {result.connections:,} | {timing.label} "
                f"| {timing.median:.3f} s ({low:.3f}-{high:.3f}) "
                f"| {timing.median / result.ideal:.2f}x "
                f"| {result.sequential_seconds / timing.median:.0f}x "
                f"| {timing.cpu_median * 1000:.3f} ms ({min(timing.cpu_per_post) * 1000:.3f}-"
                f"{max(timing.cpu_per_post) * 1000:.3f}) | {projections} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=list(CLIENTS))
    args = parser.parse_args(argv)
    _fake_aws_environment()
    results = []
    for size in args.sizes:
        result = run_size(size, args.latency_ms / 1000, args.workers, args.repeat, args.clients)
        results.append(result)
        print(
            f"{size}: ideal {result.ideal:.3f} s, sequential {result.sequential_seconds:.1f} s "
            f"(scaled from {min(size, SEQUENTIAL_SAMPLE)} posts)",
            flush=True,
        )
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
