"""Whether log lines carry their own invocation's Lambda context on the local
stack: start ``agent-channel dev`` at INFO, connect N sessions of the demo agent,
then close half of them while the other half send heartbeats (so disconnect and
heartbeat invocations overlap on the stack's worker threads), close the rest,
and read the stack's JSON log lines.

    .venv/bin/python -m bench.log_context [--connections N]

Counts ``disconnected`` lines stamped with another function's name, and request
ids whose lines name two different connections (one invocation's request id on
another's lines). Both are 0 when every invocation keeps its own context.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import websockets

SCRIPT = Path(sys.executable).with_name("agent-channel")
READY = re.compile(r"^READY (ws://\S+) (\{.*\})$")
TOKEN = re.compile(r"^\s+token\s+(\S+)$")
START_TIMEOUT = 60.0


def start() -> tuple[subprocess.Popen[str], list[str], str, int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    process = subprocess.Popen(
        [str(SCRIPT), "dev", "--port", "0", "--log-level", "INFO", "--heartbeat-seconds", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if READY.match(lines[-1]):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(START_TIMEOUT):
        process.kill()
        raise SystemExit("the local stack did not start")
    found = next(m for line in lines if (m := READY.match(line)))
    token = next(m.group(1) for line in lines if (m := TOKEN.match(line)))
    return process, lines, found.group(1), int(json.loads(found.group(2))["agent_id"]), token


async def traffic(url: str, agent_id: int, token: str, connections: int) -> None:
    sockets: list[Any] = []
    for first in range(0, connections, 5):
        sockets += await asyncio.gather(
            *[
                websockets.connect(
                    f"{url}?agent_id={agent_id}&session_id=s{i}&token={token}", open_timeout=60
                )
                for i in range(first, min(connections, first + 5))
            ]
        )
    half = len(sockets) // 2

    async def beat(socket: Any) -> None:
        for _ in range(20):
            await socket.send(json.dumps({"action": "heartbeat"}))
            await asyncio.sleep(0.05)

    await asyncio.gather(*[beat(s) for s in sockets[half:]], *[s.close() for s in sockets[:half]])
    await asyncio.gather(*[s.close() for s in sockets[half:]])
    await asyncio.sleep(4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=30)
    args = parser.parse_args()
    process, lines, url, agent_id, token = start()
    try:
        asyncio.run(traffic(url, agent_id, token, args.connections))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    disconnected = [line for line in parsed if line.get("message") == "disconnected"]
    foreign_name = [line for line in disconnected if line.get("function_name") != "disconnect"]
    connections_of: dict[str, set[str]] = {}
    for line in parsed:
        if "function_request_id" in line and "connection_id" in line:
            connections_of.setdefault(line["function_request_id"], set()).add(line["connection_id"])
    shared = [line for line in disconnected if len(connections_of[line["function_request_id"]]) > 1]
    print(
        f"disconnected lines: {len(disconnected)}; with another function's name: "
        f"{len(foreign_name)}; with a request id also on another connection's lines: "
        f"{len(shared)}"
    )


if __name__ == "__main__":
    main()
