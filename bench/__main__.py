"""``make bench`` (``.venv/bin/python -m bench``): every benchmark, one run, its
figures written to docs/BENCHMARKS.md with the command and the core count.

Options: ``--quick`` (fewer samples, for a smoke run), ``--only NAME...``
(cold_start, requests, fanout, presence).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench import cold_start, delivery_requests, presence_load, report, requests_per_op

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
COMMAND = "make bench  # runs .venv/bin/python -m bench"
FANOUT_SIZES = (10, 100, 1000, 5000)
FANOUT_LATENCY = 0.020
FANOUT_WORKERS = 64
"""The fan-out module's defaults, which this runner does not override."""


def machine() -> str:
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}"
    )


def cold_start_section(repeat: int) -> str:
    rows = cold_start.measure(repeat)
    worst = max(rows, key=lambda row: row.ratio)
    profile = cold_start.import_profile(worst.function)
    lines = [
        f"Command: `{COMMAND}`. Machine: {machine()}. Each figure is the median of "
        f"{repeat} fresh interpreters; function and floor samples alternate, so drifting "
        "load hits both sides of a ratio alike.",
        "",
        "*Function*: `import functions.<name>.app`, which builds the function's clients "
        "at import. *Floor*: `import boto3` and creating the same boto3 clients (found by "
        "recording the clients the import creates). PynamoDB builds its DynamoDB client "
        "lazily on the first request, in every function alike, so it is in neither. "
        f"Aim: at most {cold_start.AIM}x the floor.",
        "",
        "| function | clients built at import | function | floor | ratio | aim met |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.function} | {', '.join(row.clients) or '-'} "
            f"| {row.module_seconds * 1000:.0f} ms | {row.floor_seconds * 1000:.0f} ms "
            f"| {row.ratio:.2f}x | {'yes' if row.ratio <= cold_start.AIM else 'no'} |"
        )
    lines += [
        "",
        f"What dominates the import of `{worst.function}` (the highest ratio), from "
        "`python -X importtime`: each module's own import time, summed by top-level "
        "package (one run; the function module's own line includes building its clients):",
        "",
        "| package | own import time |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {seconds * 1000:.1f} ms |" for name, seconds in profile]
    lines += [
        "",
        "**Reading it.** The floor (boto3, botocore, s3transfer and urllib3, and the "
        "clients' JSON models) is most of every cold start; what a function adds is "
        "Powertools (Logger and Metrics), PynamoDB and the project's own modules, 15-50 "
        "ms per function here. Run to run, a median moves by about 10 ms on this shared "
        "2-core machine, so a ratio within 0.05 of the aim can land on either side. "
        "What would take every function under it, in library modules this benchmark "
        "does not own (described, not done):",
        "",
        "- `agent_channel.runtime` imports `dynamo_store`, `grace_scheduler` and "
        "`task_events` at module level, so every function imports all three: replay, "
        "default and backend need no grace scheduler, only cancel_offline and backend "
        "need task events. Importing each inside the factory that builds it "
        "(`presence_store()`, `grace_scheduler()`, `task_events()`) removes them from "
        "the routes that never call it.",
        "- `agent_channel.commands` imports `operator_commands` (accounts, tasks) "
        "eagerly for the backend; a lazy registry would load an op's module on first use.",
        "- Powertools `Logger` and `Metrics` are needed by every route (ids on every "
        "log line, EMF metrics); they are the largest non-boto3 item and stay.",
    ]
    return "\n".join(lines)


def requests_section() -> str:
    rows = requests_per_op.measure()
    return "\n".join(
        [
            f"Command: `{COMMAND}` (alone: `.venv/bin/python -m bench.requests_per_op`). "
            f"Machine-independent. Counted by hooking botocore "
            "(`agent_channel.local.request_counter.counting_requests`): requests really "
            "sent by the handlers, against in-process moto. *posts* are "
            "`post_to_connection` calls.",
            "",
            requests_per_op.markdown(rows),
            "",
            "**Reading it.** Every presence route is at its minimum in DynamoDB requests. "
            "Above the minimum:",
            "",
            "- `$connect` of a channel agent and a heartbeat that restores a lease also "
            "send 2 DeleteSchedule (the agent-wide and the session grace): a courtesy "
            "withdraw, since cancel_offline rechecks presence anyway. Dropping it would "
            "save 2 Scheduler calls per connect at the price of grace invocations that "
            "find the agent back and do nothing.",
            "- Every task transition (`tasks._transition`: dispatch's running -> delegated, "
            "claim_reply, cancel_offline's cancel) re-reads the task with a GetItem after "
            "its transaction, because TransactWriteItems returns no item. That is the one "
            "request over the minimum of `dispatch`, `claim_reply` and `cancel_offline`; "
            "the new state could be computed from the old one and the actions applied. "
            "`dispatch` also reads the author's name with a GetItem of its own, which "
            "could join the BatchGetItem of the agent and the topic.",
            "- The sweeper's 17 Queries are fixed per sweep (once a minute), whatever the "
            "number of agents; each routed agent then costs a consistent Query, plus a "
            "transaction when it has to be cleared.",
        ]
    )


def delivery_section() -> str:
    rows = delivery_requests.measure()
    return "\n".join(
        [
            f"Command: `{COMMAND}` (alone: `.venv/bin/python -m bench --only delivery`; "
            "the table only: `.venv/bin/python -m bench.delivery_requests`). "
            "Machine-independent: requests really sent, counted by hooking botocore, "
            "against in-process moto. What at-least-once delivery (docs/DELIVERY.md) adds.",
            "",
            delivery_requests.markdown(rows),
            "",
            "**Reading it.** Keeping a message costs one consistent Query (the newest "
            "entry, one item) and one conditional PutItem: the write that keeps the "
            "message is the one that allocates its sequence number, so there is no "
            "counter item to update besides. A `dispatch` pays exactly that on top of its "
            "unnumbered cost; so does `decide_permission`. A resume is one Query whatever "
            "it finds, plus one post per missed message and the `resumed` answer (a "
            "second Query only when it must tell an unknown sequence from a gap). An ack "
            "is one conditional UpdateItem of the task; only a refused ack reads the task "
            "to say why. Redelivery costs its schedule one index Query per routed agent "
            "per run, and one conditional write per due dispatch before its posts. A "
            "410 within the connect window is one GetItem and no write (before the rule, "
            "it ran the whole `$disconnect` path on a live connection).",
        ]
    )


def fanout_section(repeat: int) -> str:
    lines = [
        f"Command: `{COMMAND}`; it runs `.venv/bin/python -m bench.fanout --connections N "
        f"--repeat {repeat}` (the fan-out benchmark above, same setup: 20 ms per post, 64 "
        f"workers) for each size. Machine: {machine()}.",
        "",
        "| connections | what | best | median | vs sequential | ideal | vs ideal "
        "| vs one post's latency |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    sequential: list[str] = []
    for size in FANOUT_SIZES:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.fanout",
                "--connections",
                str(size),
                "--repeat",
                str(repeat),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=1800,
            check=True,
        )
        for line in done.stdout.splitlines():
            if line.startswith("sequential loop:"):
                sequential.append(f"{size}: {line.split(':', 1)[1].strip()}")
            elif re.match(r"^\| \d+ \| (deliver|broadcast_to_agent)", line):
                cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
                median = float(cells[3].removesuffix(" s"))
                # With fewer connections than workers, one post's latency is the floor.
                floor = max(FANOUT_LATENCY, size * FANOUT_LATENCY / FANOUT_WORKERS)
                row = [str(size), *cells[1:], f"{median / floor:.2f}x"]
                lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Sequential loop, per size: " + "; ".join(sequential) + ".",
        "",
        "**Reading it.** *ideal* is the fan-out module's `N x latency / workers`; below "
        f"{FANOUT_WORKERS} connections no schedule can beat one post's latency "
        f"({FANOUT_LATENCY * 1000:.0f} ms), hence the last column, against "
        "`max(latency, N x latency / workers)`. Small streams are within a few "
        "milliseconds of that floor; from about a thousand connections the posting is "
        "CPU-bound in botocore (see the fan-out section above), so the time grows "
        "linearly at roughly 0.7 ms of client CPU per post on this machine, and the "
        "speed-up over the sequential loop levels off near 30x.",
    ]
    return "\n".join(lines)


def presence_section(sessions: int, seconds: float) -> str:
    result = presence_load.run(sessions, seconds)
    retries = result.counts.get("metric:PresenceRetries", 0)
    conflicts = result.counts.get("metric:PresenceConflicts", 0)
    canceled = sum(
        n for key, n in result.counts.items() if key.endswith(":TransactionCanceledException")
    )
    conditional = sum(
        n for key, n in result.counts.items() if key.endswith(":ConditionalCheckFailedException")
    )
    answers = (
        ", ".join(
            f"{key} {n}"
            for key, n in sorted(result.counts.items())
            if not key.startswith("metric:")
        )
        or "none"
    )
    ops = result.operations
    failures = ", ".join(f"{k} {v}" for k, v in sorted(result.failures.items())) or "none"
    end = result.end_presence
    return "\n".join(
        [
            f"Command: `{COMMAND}` (alone: `.venv/bin/python -m bench.presence_load "
            f"--sessions {sessions} --seconds {seconds:g}`). Machine: {machine()}.",
            "",
            f"The local stack (`agent-channel dev --port 0`, heartbeat "
            f"{presence_load.HEARTBEAT_SECONDS} s, stale after "
            f"{presence_load.STALE_AFTER_SECONDS} s, grace {presence_load.GRACE_SECONDS} s) "
            f"in a child process; {sessions} sessions of its one demo agent, each a "
            "`websockets` client in one asyncio loop on loopback, each looping for "
            f"{seconds:g} s: connect, 0-6 heartbeats 0.2-1 s apart, disconnect, pause. "
            "Every wait has a timeout; the run stops at its deadline or at "
            f"{presence_load.MAX_OPERATIONS:,} operations.",
            "",
            "| figure | value |",
            "| --- | ---: |",
            f"| operations | {sum(ops.values())} ({ops['connect']} connects, "
            f"{ops['heartbeat']} heartbeats, {ops['disconnect']} disconnects) |",
            f"| duration | {result.seconds:.1f} s |",
            f"| operations per second | {result.ops_per_second:.1f} |",
            f"| client-side failures | {failures} |",
            f"| PresenceRetries (conditional-write retries of settle) | {retries} |",
            f"| PresenceConflicts (settle gave up, left to the sweeper) | {conflicts} |",
            f"| TransactionCanceledException answers (all transactions) | {canceled} |",
            f"| ConditionalCheckFailedException answers | {conditional} |",
            f"| error answers from AWS, by operation | {answers} |",
            f"| sessions open at the end | {result.open_at_end} |",
            f"| at the end: routing / live leases / leases | {end['routing']} / "
            f"{end['live_sessions']} / {len(end['leases'])} |",
            f"| invariant 1 at the end (routing on iff a live lease) "
            f"| {'held' if result.invariant_at_end else 'VIOLATED'} |",
            f"| after every socket closed: routing off, no lease | "
            f"{'held' if result.invariant_after_close else 'VIOLATED'} |",
            "",
            "How the retries are read: the dev stack turns EMF output off, so the child "
            "process wraps the shared Powertools `Metrics.add_metric` and counts "
            "`PresenceRetries` where the handlers add it (the same number the EMF lines "
            "carry in Lambda), and hooks botocore to count the DynamoDB error answers. "
            "Invariant 1 is read through the backend `presence` op (a consistent Query of "
            "the agent's partition).",
            "",
            "**Reading it.** The operations per second are the local stack's, not "
            "AWS's: one process runs the gateway, every handler (on 64 threads), the "
            "embedded moto server (each DynamoDB or Scheduler call an HTTP round trip "
            "to it) and the schedule loop, on the cores above, with the 200 clients on "
            "the same machine. What the run shows is correctness under contention: every "
            "`PresenceRetries` is a settle whose conditional clear lost to a concurrent "
            "subscribe, heartbeat or reap and started again from the read, and the "
            "invariant still held at the end. The ConditionalCheckFailed and "
            "ConflictException/ResourceNotFound answers are the expected ones "
            "(duplicate-safe deletes, the courtesy withdraw of a grace that does not "
            "exist, a grace of the same name being replaced).",
            "",
            "**Open question.** At this load most DeleteItem failures are the reap's "
            "conditional delete (`last_seen_at < cutoff`) failing, repeatedly for the "
            "same leases (in one probe run: 7,284 failures over 275 leases, up to 97 for "
            "one lease), far more than heartbeats refreshing a lease between the read "
            "and the delete can explain, and the embedded moto server answered some "
            "TransactWriteItems with HTTP 500. The stack is far past saturation here "
            "(connects time out client-side), and moto's in-memory backend is not made "
            "for 64 concurrent handler threads; whether any of it is the project's is not "
            "settled by this benchmark. Invariant 1 held at both checks in every run.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["cold_start", "requests", "fanout", "presence", "delivery"],
    )
    args = parser.parse_args(argv)
    wanted = set(args.only or ["cold_start", "requests", "fanout", "presence", "delivery"])
    benchmarks: list[tuple[str, str, Callable[[], str]]] = [
        ("cold_start", "Cold start", lambda: cold_start_section(3 if args.quick else 9)),
        ("requests", "Requests per operation", requests_section),
        ("fanout", "Fan-out by size", lambda: fanout_section(1 if args.quick else 3)),
        (
            "presence",
            "Presence under load",
            lambda: presence_section(50 if args.quick else 200, 5.0 if args.quick else 30.0),
        ),
        ("delivery", "Reliable agent stream: requests", delivery_section),
    ]
    for name, title, section in benchmarks:
        if name not in wanted:
            continue
        print(f"{title}...", flush=True)
        # Written as each one finishes: a later failure keeps the figures so far.
        report.update(DOC, {title: section()})
        print(f"wrote {title!r} to {DOC.relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
