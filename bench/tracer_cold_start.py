"""What tracing adds to a cold start: a fresh interpreter imports a function's
handler module (which wraps its handler in the Tracer) with X-Ray tracing on, as
in Lambda (``LAMBDA_TASK_ROOT`` set: the Tracer imports the X-Ray SDK and patches
botocore), and with it off (``POWERTOOLS_TRACE_DISABLED``), side by side,
interleaved, in CPU time of the child.

    .venv/bin/python -m bench.tracer_cold_start [--repeat N] [--function NAME]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from bench.cold_start import ROOT, environment

_IMPORT = """
import time
started = time.process_time()
import importlib
importlib.import_module({module!r})
print(time.process_time() - started)
"""

MODES = {
    "traced": {"LAMBDA_TASK_ROOT": str(ROOT), "AWS_XRAY_CONTEXT_MISSING": "IGNORE_ERROR"},
    "untraced": {"POWERTOOLS_TRACE_DISABLED": "true"},
}


def sample(function: str, mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT.format(module=f"functions.{function}.app")],
        capture_output=True,
        text=True,
        env={**environment(), **MODES[mode]},
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--function", default="heartbeat")
    args = parser.parse_args()
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.repeat):
        for mode in MODES:  # interleaved, so drift hits both alike
            times[mode].append(sample(args.function, mode))
    for mode, values in times.items():
        print(
            f"{args.function} {mode}: median {statistics.median(values) * 1000:.0f} ms CPU "
            f"(range {min(values) * 1000:.0f}-{max(values) * 1000:.0f}, n={len(values)})"
        )
    ratios = sorted(t / u for t, u in zip(times["traced"], times["untraced"], strict=True))
    print(
        f"traced/untraced: median {statistics.median(ratios):.2f}x "
        f"(range {ratios[0]:.2f}-{ratios[-1]:.2f})"
    )


if __name__ == "__main__":
    main()
