"""``python -m agent_channel_dev.scale``: simulate fleets and print the findings.

python -m agent_channel_dev.scale --agents 10000 100000 1000000
python -m agent_channel_dev.scale --cost       # today's timings beside the proposed
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from agent_channel_dev.scale import aws
from agent_channel_dev.scale.report import cost_table, peaks_table, per_minute_table, summary
from agent_channel_dev.scale.simulation import Scenario, Simulation

WORKERS_FOR = {10_000: 16, 100_000: 32, 1_000_000: 256}


def workers_for(agents: int) -> int:
    """The SweepWorkers setting docs/SCALE.md gives for a fleet of this size."""
    return next((w for size, w in sorted(WORKERS_FOR.items()) if agents <= size), 256)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m agent_channel_dev.scale")
    parser.add_argument("--agents", type=int, nargs="*", default=[10_000])
    parser.add_argument("--minutes", type=int, default=12)
    parser.add_argument("--heartbeat", type=int, default=30)
    parser.add_argument("--storm-at", type=int, default=6, help="minute; -1: no storm")
    parser.add_argument(
        "--cost",
        type=int,
        nargs="*",
        metavar="HEARTBEAT",
        help="cost per session-month at these heartbeat intervals (15: before; 30: now)",
    )
    args = parser.parse_args()
    print(f"prices: {aws.REGION}, price list of {aws.PRICE_LIST_DATE}\n")
    if args.cost is not None:
        base = Scenario(agents=args.agents[0], minutes=6, storm_at_minute=None)
        outcomes = {
            f"{beat} s": Simulation(dataclasses.replace(base, heartbeat_seconds=beat)).run()
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
        )
        started = time.process_time()
        outcome = Simulation(scenario).run()
        spent = time.process_time() - started
        print(f"## {agents:,} agents ({spent:.0f} s of CPU to simulate)\n")
        print(summary(outcome) + "\n")
        print(peaks_table(outcome) + "\n")
        print(per_minute_table(outcome) + "\n")


if __name__ == "__main__":
    main()
