"""Fan-out benchmark: one stream of 1,000 connections, 20 ms per post_to_connection.

    .venv/bin/python -m bench.fanout [--connections N] [--latency-ms L] [--workers W]

The @connections API is the project's local server (real HTTP on 127.0.0.1,
latency injected per request, run in a child process so that its event loop
does not compete with the posting threads for the interpreter lock); the
stream's membership lives in an in-process moto DynamoDB. It reports, in one
run:

- a sequential loop of post_to_connection (what fan-out must not be),
- ``deliver`` (the concurrent posting alone) and ``broadcast_to_agent`` (the
  consistent Query of the stream plus the posting),
- the ideal ``N x latency / workers``,

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
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "lib") not in sys.path:
    sys.path.insert(0, str(ROOT / "lib"))

STAGE = "bench"
AGENT_ID = 42


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
    seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _timed(label: str, repeat: int, action: Callable[[], object]) -> Timing:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return Timing(label, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[64], help="FANOUT_WORKERS (one or more)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="concurrent runs to time")
    args = parser.parse_args(argv)

    _fake_aws_environment()
    os.environ["FANOUT_WORKERS"] = str(max(args.workers))
    from moto import mock_aws
    from moto.core.config import DefaultConfig

    from agent_channel.delivery import broadcast, fanout
    from agent_channel.delivery.streams import agent_stream
    from agent_channel.lambda_kit import wiring
    from agent_channel.storage import schema
    from agent_channel.storage.records import Record, StreamMemberRecord

    n, latency = args.connections, args.latency_ms / 1000
    ids = [f"conn-{i:05d}=" for i in range(n)]
    stream = agent_stream(AGENT_ID)
    data = broadcast.encode({"type": "bench", "n": 1})

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=_serve, args=(ids, latency, child), daemon=True)
    server.start()
    endpoint = parent.recv()
    moto_config: DefaultConfig = {
        "core": {"passthrough": {"urls": [r"http://127\.0\.0\.1:\d+/"], "services": []}}
    }
    try:
        with mock_aws(config=moto_config):
            Record.create_table(billing_mode="PAY_PER_REQUEST", wait=False)
            with StreamMemberRecord.batch_write() as batch:
                for connection_id in ids:
                    batch.save(
                        StreamMemberRecord(
                            *schema.member_key(stream, connection_id),
                            stream=stream,
                            connection_id=connection_id,
                        )
                    )
            client = wiring.management_api(endpoint)
            # Warm the client's connection pool and the server, as a warm Lambda is.
            fanout.deliver(
                stream, ids, data, client=client, workers=max(args.workers), on_gone=None
            )

            def sequential() -> None:
                for connection_id in ids:
                    client.post_to_connection(ConnectionId=connection_id, Data=data)

            def concurrent(workers: int) -> Callable[[], None]:
                def run() -> None:
                    result = fanout.deliver(
                        stream, ids, data, client=client, workers=workers, on_gone=None
                    )
                    assert len(result.delivered) == n, result

                return run

            def end_to_end(workers: int) -> Callable[[], None]:
                def run() -> None:
                    result = broadcast.broadcast_to_agent(
                        AGENT_ID,
                        {"type": "bench", "n": 1},
                        client=client,
                        on_gone=None,
                        workers=workers,
                    )
                    assert len(result.delivered) == n, result

                return run

            seq = _timed("sequential loop", 1, sequential)
            rows = [
                (
                    workers,
                    _timed("deliver", args.repeat, concurrent(workers)),
                    _timed("broadcast_to_agent", args.repeat, end_to_end(workers)),
                )
                for workers in args.workers
            ]
        parent.send("count")
        least, most = parent.recv()
        # warm-up, sequential, and each timed run
        expected = 2 + 2 * args.repeat * len(args.workers)
        assert least == most == expected, (least, most, expected)
    finally:
        parent.send("stop")
        server.join(timeout=10)

    print(f"fan-out: {n} connections on one stream, {args.latency_ms:g} ms per post")
    print(f"every connection received all {expected} messages")
    print(f"sequential loop: {seq.best:.3f} s")
    print()
    print("| workers | what | best | median | vs sequential | ideal | vs ideal |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for workers, fan, full in rows:
        ideal = n * latency / workers
        for timing in (fan, full):
            print(
                f"| {workers} | {timing.label} | {timing.best:.3f} s | {timing.median:.3f} s"
                f" | {seq.best / timing.median:.1f}x | {ideal:.3f} s"
                f" | {timing.median / ideal:.2f}x |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
