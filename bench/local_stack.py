"""What the local stack's Lambda emulation costs: the time from launch to ready,
and a message's round trip through gateway, worker process and ``@connections``.

    .venv/bin/python -m bench.local_stack [--repeat 3] [--round-trips 200]

Each repeat launches ``agent-channel dev --template tests/apps/probe/template.yaml
--port 0`` (seven functions, each started in a worker process of its own before
ready), then sends ``--round-trips`` echo messages one after another on one
socket (frame -> gateway -> echo worker -> signed post -> frame back). Wall
clock, on whatever else the machine runs: the range over repeats is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "apps" / "probe" / "template.yaml"


async def round_trips(url: str, count: int) -> list[float]:
    samples: list[float] = []
    async with websockets.connect(url) as ws:
        for index in range(count):
            started = time.perf_counter()
            await ws.send(json.dumps({"probe": {"route": "big", "size": 16}, "i": index}))
            await asyncio.wait_for(ws.recv(), 10)
            samples.append(time.perf_counter() - started)
    return samples


def once(count: int) -> tuple[float, list[float]]:
    sys.path.insert(0, str(ROOT))
    from tests.e2e.stack import start_app_server

    launched = time.perf_counter()
    server = start_app_server(PROBE)
    ready = time.perf_counter() - launched
    try:
        samples = asyncio.run(round_trips(f"{server.ws_url}?token=allow-bench", count))
    finally:
        server.stop()
    return ready, samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=200)
    args = parser.parse_args()
    readies: list[float] = []
    medians: list[float] = []
    p90s: list[float] = []
    for _ in range(args.repeat):
        ready, samples = once(args.round_trips)
        readies.append(ready)
        medians.append(statistics.median(samples))
        p90s.append(statistics.quantiles(samples, n=10)[-1])
    print(f"launch to ready: {min(readies):.2f}-{max(readies):.2f} s over {args.repeat} runs")
    print(
        f"round trip median: {1000 * min(medians):.1f}-{1000 * max(medians):.1f} ms, "
        f"p90: {1000 * min(p90s):.1f}-{1000 * max(p90s):.1f} ms "
        f"({args.round_trips} per run)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
