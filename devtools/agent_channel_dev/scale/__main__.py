"""``python -m agent_channel_dev.scale``: simulate fleets and print the findings.

python -m agent_channel_dev.scale --agents 10000 100000 1000000
python -m agent_channel_dev.scale --agents 1000000 --storm-at 5 --minutes 90 --until-settled
python -m agent_channel_dev.scale --cost       # today's timings beside the proposed
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable

from agent_channel_dev.scale import aws
from agent_channel_dev.scale.report import cost_table, peaks_table, per_minute_table, summary
from agent_channel_dev.scale.simulation import Scenario, Simulation

WORKERS_FOR = {10_000: 16, 100_000: 32, 1_000_000: 256}


def workers_for(agents: int) -> int:
    """The SweepWorkers setting docs/SCALE.md gives for a fleet of this size."""
    return next((w for size, w in sorted(WORKERS_FOR.items()) if agents <= size), 256)


def _progress(started: float) -> Callable[[int, int, int], None]:
    def report(minute: int, connected: int, waiting: int) -> None:
        # On stderr, so the markdown on stdout stays as docs/SCALE.md quotes it.
        print(
            f"minute {minute}: {connected:,} sessions connected, {waiting:,} of the storm's "
            f"away, {time.process_time() - started:.0f} s of CPU",
            file=sys.stderr,
            flush=True,
        )

    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m agent_channel_dev.scale")
    parser.add_argument("--agents", type=int, nargs="*", default=[10_000])
    parser.add_argument("--minutes", type=int, default=12)
    parser.add_argument("--heartbeat", type=int, default=30)
    parser.add_argument("--storm-at", type=int, default=6, help="minute; -1: no storm")
    parser.add_argument(
        "--until-settled",
        action="store_true",
        help="end with the minute the storm settles in (--minutes is then the longest run)",
    )
    parser.add_argument(
        "--cost",
        type=int,
        nargs="*",
        metavar="HEARTBEAT",
        help="cost per session-month at these heartbeat intervals (15: before; 30: now)",
    )
    parser.add_argument(
        "--lambda-heartbeats",
        action="store_true",
        help="with --cost: also each interval as before issue 17, every heartbeat a Lambda",
    )
    args = parser.parse_args()
    print(f"prices: {aws.REGION}, price list of {aws.PRICE_LIST_DATE}\n")
    if args.cost is not None:
        base = Scenario(agents=args.agents[0], minutes=6, storm_at_minute=None)
        designs = [(False, "")] + ([(True, " Lambda")] if args.lambda_heartbeats else [])
        outcomes = {
            f"{beat} s{label}": Simulation(
                dataclasses.replace(base, heartbeat_seconds=beat, lambda_heartbeats=lambda_beat)
            ).run()
            for lambda_beat, label in designs
            for beat in args.cost or [15, 30]
        }
        print(cost_table(outcomes))
        return
    for agents in args.agents:
        scenario = Scenario(
            agents=agents,
            minutes=args.minutes,
            heartbeat_seconds=args.heartbeat,
            storm_at_minute=args.storm_at if args.storm_at >= 0 else None,
            sweep_workers=workers_for(agents),
            until_settled=args.until_settled,
        )
        started, wall = time.process_time(), time.monotonic()
        outcome = Simulation(scenario).run(progress=_progress(started))
        spent, wall = time.process_time() - started, time.monotonic() - wall
        print(f"## {agents:,} agents ({spent:.0f} s of CPU, {wall:.0f} s of wall time)\n")
        print(summary(outcome) + "\n")
        print(peaks_table(outcome) + "\n")
        print(per_minute_table(outcome) + "\n")


if __name__ == "__main__":
    main()
