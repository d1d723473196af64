"""What tracing adds to a cold start: a fresh interpreter imports a function's
handler module from the built layer (which wraps its handler in the Tracer) with
X-Ray tracing on, as in Lambda (``LAMBDA_TASK_ROOT`` set: the Tracer imports the
X-Ray SDK and patches botocore), and with it off (``POWERTOOLS_TRACE_DISABLED``),
side by side, interleaved, in CPU time of the child.

    .venv/bin/python -m bench.tracer_cold_start [--repeat N] [--function NAME]
"""

from __future__ import annotations

import argparse
import statistics

from bench.cold_start import IMPORT_APP, Layers, built_layers, cpu_seconds, environment

MODES = {
    # environment() sets what Lambda sets: with LAMBDA_TASK_ROOT the Tracer is on.
    "traced": {},
    "untraced": {"POWERTOOLS_TRACE_DISABLED": "true"},
}


def sample(layers: Layers, function: str, mode: str) -> float:
    env = environment(layers.compiled, layers.functions / function)
    return cpu_seconds(IMPORT_APP, {**env, **MODES[mode]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--function", default="heartbeat")
    args = parser.parse_args()
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    with built_layers() as layers:
        for _ in range(args.repeat):
            for mode in MODES:  # interleaved, so drift hits both alike
                times[mode].append(sample(layers, args.function, mode))
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
