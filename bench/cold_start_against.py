"""Cold start of every function, this tree against another commit, side by side.

Each sample is a fresh interpreter importing ``functions/<name>/app.py`` (which
builds its AWS clients at import, as in Lambda) and printing the CPU time the
import took. The two trees' samples are interleaved (this, other, this, other...)
so that drifting machine load hits both sides of each ratio alike; the ratio of
medians and the range of per-round ratios are reported.

    .venv/bin/python -m bench.cold_start_against REV [--repeat N]

The other tree is checked out with ``git worktree`` into a temporary folder and
removed afterwards. Its runtime package must be importable from ``lib/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.cold_start import FUNCTIONS, ROOT, environment

_IMPORT_CPU = """
import time
started = time.process_time()
import app
print(time.process_time() - started)
"""


def _cpu_seconds(tree: Path, function: str) -> float:
    # The tree's own package over the development venv's libraries (no layer is
    # built: both trees share the venv, so only their own code differs).
    here = tree / "functions" / function
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_CPU],
        capture_output=True,
        text=True,
        env=environment(tree / "lib", here),
        cwd=here,
        timeout=120,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def compare(other: Path, repeat: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for function in FUNCTIONS:
        # Warm the disk cache and both trees' bytecode, as a Lambda image has them.
        _cpu_seconds(ROOT, function)
        _cpu_seconds(other, function)
        this_side: list[float] = []
        other_side: list[float] = []
        for _ in range(repeat):
            this_side.append(_cpu_seconds(ROOT, function))
            other_side.append(_cpu_seconds(other, function))
        per_round = [mine / theirs for mine, theirs in zip(this_side, other_side, strict=True)]
        rows.append(
            {
                "function": function,
                "this_ms": round(statistics.median(this_side) * 1000, 1),
                "other_ms": round(statistics.median(other_side) * 1000, 1),
                "ratio": round(statistics.median(this_side) / statistics.median(other_side), 3),
                "round_ratio_range": [round(min(per_round), 3), round(max(per_round), 3)],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("rev", help="the commit to compare against")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        other = Path(scratch) / "other"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(other), args.rev],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            rows = compare(other, args.repeat)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, check=False
            )
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
