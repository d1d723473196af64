"""Cold start: a fresh process's time to import a function's handler module (which
builds its AWS clients at import), against the floor of ``import boto3`` plus
creating the same clients. Each sample is a new interpreter.

    .venv/bin/python -m bench.cold_start [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FUNCTIONS = (
    "authorize",
    "connect",
    "disconnect",
    "heartbeat",
    "replay",
    "default",
    "sweeper",
    "cancel_offline",
    "backend",
)

AIM = 1.25

_MODULE = """
import time
started = time.perf_counter()
import importlib
importlib.import_module({module!r})
print(time.perf_counter() - started)
"""

_CLIENTS = """
import json
import botocore.session
built = []
create = botocore.session.Session.create_client
def recording(self, service_name, *args, **kwargs):
    built.append(service_name)
    return create(self, service_name, *args, **kwargs)
botocore.session.Session.create_client = recording
import importlib
importlib.import_module({module!r})
print(json.dumps(built))
"""
"""Which clients a function's app.py builds at import (PynamoDB builds its own
DynamoDB client lazily, on the first request, in every function alike)."""

_FLOOR = """
import time
started = time.perf_counter()
import boto3
for service in {services!r}:
    if service == "apigatewaymanagementapi":
        boto3.client(service, endpoint_url="https://example.execute-api.us-east-1.amazonaws.com/p")
    else:
        boto3.client(service)
print(time.perf_counter() - started)
"""


def environment() -> dict[str, str]:
    """What Lambda would give the function, with fake credentials: nothing is sent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "TABLE_NAME": "agent-channel-bench",
            "CALLBACK_URL": "https://example.execute-api.us-east-1.amazonaws.com/prod",
            "POWERTOOLS_SERVICE_NAME": "agent-channel",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "lib")]),
            "PYTHONDONTWRITEBYTECODE": "0",
        }
    )
    return env


def _sample(code: str, *flags: str) -> tuple[float, str]:
    done = subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True,
        text=True,
        env=environment(),
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1]), done.stderr


@dataclass
class ColdStart:
    function: str
    clients: tuple[str, ...]
    module_seconds: float
    floor_seconds: float

    @property
    def ratio(self) -> float:
        return self.module_seconds / self.floor_seconds


def clients_built(function: str) -> tuple[str, ...]:
    done = subprocess.run(
        [sys.executable, "-c", _CLIENTS.format(module=f"functions.{function}.app")],
        capture_output=True,
        text=True,
        env=environment(),
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def measure(repeat: int) -> list[ColdStart]:
    # Also warms the disk cache and the .pyc files, as a Lambda image has them.
    clients = {name: clients_built(name) for name in FUNCTIONS}
    samples: dict[str, list[float]] = defaultdict(list)
    floors: dict[str, list[float]] = defaultdict(list)
    # Interleaved (function, floor, function, floor...) so that drifting machine
    # load hits both sides of each ratio alike.
    for _ in range(repeat):
        for name in FUNCTIONS:
            samples[name].append(_sample(_MODULE.format(module=f"functions.{name}.app"))[0])
            floors[name].append(_sample(_FLOOR.format(services=list(clients[name])))[0])
    return [
        ColdStart(
            name,
            clients[name],
            statistics.median(samples[name]),
            statistics.median(floors[name]),
        )
        for name in FUNCTIONS
    ]


def import_profile(function: str, top: int = 10) -> list[tuple[str, float]]:
    """Where the import's time goes, from ``-X importtime``: each module's own
    (self) time, summed by top-level package, largest first."""
    _, stderr = _sample(_MODULE.format(module=f"functions.{function}.app"), "-X", "importtime")
    totals: dict[str, float] = defaultdict(float)
    for line in stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if own.isdigit():
            totals[name.split(".")[0]] += int(own) / 1e6
    return sorted(totals.items(), key=lambda item: -item[1])[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    rows = measure(args.repeat)
    print(json.dumps([row.__dict__ | {"ratio": row.ratio} for row in rows], indent=2))
    print(json.dumps(import_profile("backend"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
