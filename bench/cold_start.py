"""Cold start: the CPU time a fresh interpreter spends importing a function's
handler module (which builds its AWS clients at import), against the floor of
``import boto3`` plus creating the same clients. Each sample is a new interpreter.

    .venv/bin/python -m bench.cold_start [--repeat N] [--functions NAME [NAME ...]]
        [--stack-offsets N]

``--functions`` measures only the functions named (all of them by default): a
function near the aim can be sampled more often in the same time.

``--stack-offsets N`` runs round r's samples (function, floor and no-bytecode
alike) from a frame padded by (r mod N)/N of a 16 KiB chunk. CPython (3.11 and
3.12) grows its frame stack in chunks of that size and unmaps a chunk as soon as
the first frame in it returns, so code that calls and returns across a chunk's
edge maps and unmaps it every time: at this script's own depth a function can
pay some 2,000 such pairs (about 9 ms of CPU) that a few frames deeper it does
not pay at all, and the floor likewise. On Lambda the edges fall where its
runtime's depth puts them, not where this script's does; offsets spread over one
chunk average that out. The default spreads the rounds over ``STACK_OFFSETS``
depths (``--repeat`` a multiple of it weighs each depth alike); ``1`` samples at
this script's depth only.

It runs what Lambda runs: the layer is built by the layer's own Makefile (the
target ``sam build`` invokes) into a temporary folder, and each function's
``app.py`` is imported from a folder of its own, as in ``/var/task``. Python
writes no bytecode (``PYTHONDONTWRITEBYTECODE``: ``/opt`` and ``/var/task`` are
read-only on Lambda), and the interpreter runs without site-packages (``-S``), so
nothing comes from the development venv. Two layers are measured: as built (with
its unchecked-hash ``.pyc``), and the same files with every ``__pycache__``
removed (what the ``python3.12`` build method shipped).

CPU time (``time.process_time``), not wall-clock: on a shared machine the
wall-clock of one import swings by tens of percent between runs, its CPU time far
less. Function, floor and no-bytecode samples alternate, so drifting load hits
every side of a ratio alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FUNCTIONS = (
    "admin",
    "authorize",
    "connect",
    "disconnect",
    "heartbeat",
    "replay",
    "default",
    "sweeper",
    "cancel_offline",
    "backend",
    "fanout",
    "redeliver",
    "stream",
)

AIM = 1.15
STACK_OFFSETS = 8
"""Depths within one frame-stack chunk the rounds are spread over (``--stack-offsets``)."""

CHUNK_SLOTS = 16 * 1024 // 8
"""Pointers in one chunk of CPython's frame stack (16 KiB on 3.11 and 3.12)."""

IMPORT_APP = """
import sys
import time
started = time.process_time()
import app
# PynamoDB builds its DynamoDB client on a function's first request: built here,
# so that the function pays what the floor (which builds it at once) pays.
if "pynamodb.models" in sys.modules:
    from agent_channel.storage.records import Record
    Record._get_connection().connection.client
print(time.process_time() - started)
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
# The lean poster is the function's @connections client: a boto3 function doing
# the same job would build boto3's, so the floor builds that one for it.
from agent_channel.delivery import poster
build_poster = poster.ConnectionsPoster.__init__
def recording_poster(self, *args, **kwargs):
    built.append("apigatewaymanagementapi")
    build_poster(self, *args, **kwargs)
poster.ConnectionsPoster.__init__ = recording_poster
import sys
import app
# PynamoDB builds its DynamoDB client on a function's first request: built here,
# so that the function pays what the floor (which builds it at once) pays.
if "pynamodb.models" in sys.modules:
    from agent_channel.storage.records import Record
    Record._get_connection().connection.client
print(json.dumps(built))
"""
"""Which clients a function builds before its first request is sent: at import,
and PynamoDB's DynamoDB client (built on the first request)."""

_FLOOR = """
import time
started = time.process_time()
import boto3
for service in {services!r}:
    if service == "apigatewaymanagementapi":
        boto3.client(service, endpoint_url="https://example.execute-api.us-east-1.amazonaws.com/p")
    else:
        boto3.client(service)
print(time.process_time() - started)
"""


@dataclass(frozen=True)
class Layers:
    """A built layer with bytecode, the same without, the functions' folders, and
    the boto3 Lambda's runtime provides (the layer ships none), for the floor."""

    compiled: Path
    source_only: Path
    functions: Path
    runtime: Path


def build_layer(artifacts: Path) -> None:
    """Run the layer Makefile's target, as ``sam build`` does, with this interpreter
    (bytecode is per interpreter version) and its own architecture's wheels."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT / "lib"),
            "build-SharedLayer",
            f"ARTIFACTS_DIR={artifacts}",
            f"PYTHON={sys.executable}",
            f"RUNTIME={version}",
            f"PLATFORM={platform_tag()}",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )


def platform_tag() -> str:
    """The wheel platform of this machine (the layer must import here)."""
    import platform

    machine = platform.machine()
    return f"manylinux2014_{'aarch64' if machine in ('aarch64', 'arm64') else machine}"


@contextmanager
def built_layers() -> Iterator[Layers]:
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        base = Path(tmp)
        build_layer(base / "compiled")
        shutil.copytree(base / "compiled", base / "source-only")
        for cache in list((base / "source-only").rglob("__pycache__")):
            shutil.rmtree(cache)
        for name in FUNCTIONS:
            (base / "functions" / name).mkdir(parents=True)
            shutil.copy(ROOT / "functions" / name / "app.py", base / "functions" / name)
        runtime_boto3(base / "runtime")
        yield Layers(
            base / "compiled" / "python",
            base / "source-only" / "python",
            base / "functions",
            base / "runtime",
        )


def runtime_boto3(folder: Path) -> None:
    """boto3 and s3transfer as Lambda's runtime has them beside the layer (compiled,
    like the layer): the floor imports boto3, the functions do not."""
    import boto3
    import s3transfer

    for package in (boto3, s3transfer):
        source = Path(str(package.__file__)).parent
        shutil.copytree(source, folder / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    compile_all = [sys.executable, "-m", "compileall", "-q", "--invalidation-mode"]
    subprocess.run(
        [*compile_all, "unchecked-hash", str(folder)],
        check=True,
        capture_output=True,
    )


def environment(layer: Path, function_dir: Path, runtime: Path | None = None) -> dict[str, str]:
    """What Lambda would give the function, with fake credentials: nothing is sent.
    ``runtime`` (what Lambda's runtime provides, boto3) comes last on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_LAMBDA_FUNCTION_NAME": "bench",
            "TABLE_NAME": "agent-channel-bench",
            "CALLBACK_URL": "https://example.execute-api.us-east-1.amazonaws.com/prod",
            "POWERTOOLS_SERVICE_NAME": "agent-channel",
            "PYTHONPATH": os.pathsep.join(
                [str(function_dir), str(layer), *([str(runtime)] if runtime else [])]
            ),
            "PYTHONDONTWRITEBYTECODE": "1",
            # What Lambda's runtime sets and the X-Ray SDK reads: in Lambda it samples
            # nothing itself (the trace header decides), so it builds no X-Ray client.
            "LAMBDA_TASK_ROOT": str(function_dir),
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
            "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
            "AWS_XRAY_DAEMON_ADDRESS": "169.254.79.129:2000",
        }
    )
    return env


def _run(code: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-S", *flags, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=env["PYTHONPATH"].split(os.pathsep)[0],
        timeout=120,
        check=True,
    )


def cpu_seconds(code: str, env: dict[str, str]) -> float:
    return float(_run(code, env).stdout.strip().splitlines()[-1])


@dataclass
class ColdStart:
    function: str
    clients: tuple[str, ...]
    compiled: list[float]
    source_only: list[float]
    floor: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.compiled) / statistics.median(self.floor)

    @property
    def ratio_range(self) -> tuple[float, float]:
        """The pairwise ratios' range (each function sample over the floor sample
        taken right after it)."""
        ratios = [c / f for c, f in zip(self.compiled, self.floor, strict=True)]
        return min(ratios), max(ratios)

    @property
    def bytecode_saves(self) -> float:
        return statistics.median(self.source_only) - statistics.median(self.compiled)


def clients_built(layers: Layers, function: str) -> tuple[str, ...]:
    env = environment(layers.compiled, layers.functions / function)
    return tuple(json.loads(_run(_CLIENTS, env).stdout.strip().splitlines()[-1]))


def at_stack_offset(code: str, slots: int) -> str:
    """``code`` run from a frame ``slots`` pointers larger than a bare call's, so
    every frame it pushes lies that much deeper in the frame stack (the padding is
    parameters with defaults: room, and no work). The timer starts inside ``code``:
    compiling the padding is not counted."""
    if slots == 0:
        return code
    body = "".join(f"    {line}\n" for line in code.strip().splitlines())
    padding = "".join(f", _{i}=None" for i in range(slots))
    return (
        f"def _sample():\n{body}\ndef _padded(sample{padding}):\n    sample()\n\n_padded(_sample)\n"
    )


def measure(
    repeat: int,
    layers: Layers,
    functions: tuple[str, ...] = FUNCTIONS,
    stack_offsets: int = STACK_OFFSETS,
) -> list[ColdStart]:
    rows = {name: ColdStart(name, clients_built(layers, name), [], [], []) for name in functions}
    for round_ in range(repeat):
        slots = round_ % stack_offsets * CHUNK_SLOTS // stack_offsets
        import_app = at_stack_offset(IMPORT_APP, slots)
        for name, row in rows.items():
            here = layers.functions / name
            compiled = environment(layers.compiled, here, layers.runtime)
            row.compiled.append(cpu_seconds(import_app, compiled))
            floor = at_stack_offset(_FLOOR.format(services=list(row.clients)), slots)
            row.floor.append(cpu_seconds(floor, compiled))
            source_only = environment(layers.source_only, here, layers.runtime)
            row.source_only.append(cpu_seconds(import_app, source_only))
    return list(rows.values())


_DATACLASSES = """
import dataclasses
import json
import time
spent = [0.0, 0]
process = dataclasses._process_class
def timed(cls, *args, **kwargs):
    started = time.process_time()
    try:
        return process(cls, *args, **kwargs)
    finally:
        spent[0] += time.process_time() - started
        spent[1] += 1
dataclasses._process_class = timed
import app
print(json.dumps(spent))
"""


def dataclass_cost(layers: Layers, function: str, repeat: int = 3) -> tuple[float, int]:
    """CPU seconds a function's init spends making dataclasses (the median of
    ``repeat``), and how many it makes: on Python 3.12 each one compiles its
    generated methods one by one, about 0.5 ms for a frozen class. The project's
    immutable value types are NamedTuples for that reason (about 0.08 ms a class,
    not counted here): what is left is the libraries' dataclasses and the few of
    the project's that a tuple cannot be (mutable, with a mutable default, or
    with a ``__post_init__``)."""
    env = environment(layers.compiled, layers.functions / function)
    samples = [
        json.loads(_run(_DATACLASSES, env).stdout.strip().splitlines()[-1]) for _ in range(repeat)
    ]
    return statistics.median(spent for spent, _ in samples), int(samples[0][1])


def import_profile(layers: Layers, function: str, top: int = 10) -> list[tuple[str, float]]:
    """Where the import's time goes, from ``-X importtime``: each module's own
    (self) time, summed by top-level package, largest first (wall-clock: the only
    clock ``-X importtime`` has)."""
    env = environment(layers.compiled, layers.functions / function)
    stderr = _run(IMPORT_APP, env, "-X", "importtime").stderr
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
    parser.add_argument("--repeat", type=int, default=STACK_OFFSETS)
    parser.add_argument(
        "--functions",
        nargs="+",
        choices=FUNCTIONS,
        default=FUNCTIONS,
        metavar="NAME",
        help="measure only these functions (default: all)",
    )
    parser.add_argument(
        "--stack-offsets",
        type=int,
        default=STACK_OFFSETS,
        metavar="N",
        help=f"spread the rounds over N frame-stack offsets within one chunk "
        f"(default: {STACK_OFFSETS})",
    )
    args = parser.parse_args(argv)
    if args.stack_offsets < 1:
        parser.error("--stack-offsets must be at least 1")
    with built_layers() as layers:
        rows = measure(args.repeat, layers, tuple(args.functions), args.stack_offsets)
        for row in rows:
            low, high = row.ratio_range
            print(
                f"{row.function:15} floor {statistics.median(row.floor) * 1000:6.1f} ms  "
                f"function {statistics.median(row.compiled) * 1000:6.1f} ms  "
                f"ratio {row.ratio:.2f} ({low:.2f}-{high:.2f})  "
                f"without bytecode {statistics.median(row.source_only) * 1000:6.1f} ms"
            )
        worst = max(rows, key=lambda row: row.ratio)
        print(json.dumps(import_profile(layers, worst.function), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
