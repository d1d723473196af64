"""``make bench`` (``.venv/bin/python -m bench``): every benchmark, one run, the
whole of docs/BENCHMARKS.md written from it, each section with its command, the
machine and the load at the time.

Options: ``--quick`` (fewer samples, for a smoke run), ``--only NAME...``
(cold_start, requests, fanout, presence: those sections are replaced in place,
the others kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from bench import (
    cold_start,
    delivery_requests,
    fanout,
    moto_capacity,
    presence_load,
    report,
    requests_per_op,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
COMMAND = "make bench  # runs .venv/bin/python -m bench"
FANOUT_SIZES = (1000, 10000)
FANOUT_LATENCY = 0.020
FANOUT_WORKERS = 64
FANOUT_AIM_VS_IDEAL = 1.5
FANOUT_AIM_VS_SEQUENTIAL = 40


def machine() -> str:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip() + ", "
                break
    return (
        f"{model}{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}"
    )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def cold_start_section(repeat: int) -> str:
    before = load()
    with cold_start.built_layers() as layers:
        rows = cold_start.measure(repeat, layers)
        worst = max(rows, key=lambda row: row.ratio)
        profile = cold_start.import_profile(layers, worst.function)
    lines = [
        f"Command: `{COMMAND}` (alone: `.venv/bin/python -m bench.cold_start --repeat "
        f"{repeat}`). Machine: {machine()}. Load: {before} at the start, {load()} at the end.",
        "",
        "The layer is built by `lib/Makefile` (the target `sam build` runs for "
        "`BuildMethod: makefile`) into a temporary folder, with this interpreter; each "
        "function's `app.py` is imported from a folder of its own, as from `/var/task`, "
        "with `PYTHONDONTWRITEBYTECODE` (Lambda's `/opt` and `/var/task` are read-only) "
        "and without site-packages. Each figure is the CPU time (`time.process_time`) of "
        f"a fresh interpreter, the median of {repeat}; function, floor and no-bytecode "
        "samples alternate, so drifting load hits every column alike.",
        "",
        "*Function*: `import app`, which builds the function's clients at init, plus "
        "PynamoDB's DynamoDB client where the function uses DynamoDB (the project builds "
        "it at init from the shared botocore session; a function that does not is charged "
        "it here, as its first request would be). *Floor*: `import boto3` and creating "
        "the same clients with `boto3.client`. *Without bytecode*: the function again, "
        "from the same layer with every `__pycache__` removed (what the `python3.12` build "
        f"method shipped). Aim: every function at most {cold_start.AIM}x the floor.",
        "",
        "| function | clients | function | floor | ratio (pairwise range) | aim met "
        "| without bytecode | bytecode saves |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for row in rows:
        low, high = row.ratio_range
        lines.append(
            f"| {row.function} | {', '.join(row.clients) or '-'} "
            f"| {_ms(statistics.median(row.compiled))} | {_ms(statistics.median(row.floor))} "
            f"| {row.ratio:.2f}x ({low:.2f}-{high:.2f}) "
            f"| {'yes' if row.ratio <= cold_start.AIM else 'no'} "
            f"| {_ms(statistics.median(row.source_only))} | {_ms(row.bytecode_saves)} |"
        )
    met = sum(row.ratio <= cold_start.AIM for row in rows)
    lines += [
        "",
        f"What remains in the import of `{worst.function}` (the highest ratio), from "
        "`python -X importtime` on the built layer: each module's own time, summed by "
        "top-level package (one run, wall-clock: the only clock `-X importtime` has):",
        "",
        "| package | own import time |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {seconds * 1000:.1f} ms |" for name, seconds in profile]
    lines += [
        "",
        f"**Reading it.** {met} of {len(rows)} functions meet the aim in this run. What "
        "took them there:",
        "",
        "- *Bytecode in the layer*: without it every cold start compiles boto3, botocore, "
        "PynamoDB, Powertools and the project again (the last column); `lib/Makefile` "
        "compiles every module with `--invalidation-mode unchecked-hash`, so the "
        "interpreter loads the `.pyc` without checking the source's mtime (which the zip "
        "does not keep exactly). `tests/contract/test_layer_build.py` builds the layer "
        "as `sam build` does and checks a `.pyc` for every module.",
        "- *No garbage collection during init* (`lambda_kit.cold_start`): an import "
        "allocates hundreds of thousands of objects that live as long as the process; the "
        "collections they trigger free nothing. `ready()` freezes them afterwards. The "
        "floor runs with the collector on, as plain boto3 code would: part of the margin "
        "under 1.0x is that.",
        "- *One botocore session* (`wiring.botocore_session`): PynamoDB built its client "
        "from a session of its own, loading botocore's endpoint and model data a second "
        "time (about 33 ms of CPU); it is now handed the process's session at init.",
        "- *No @connections client from boto3*: the lean poster (`delivery.poster`) is "
        "built from the standard library and environment credentials, without a request "
        "or a client model; replay, $default and backend build no boto3 client for it.",
        "- *Lazy imports*: each wiring factory imports what it builds; $default loads "
        "neither PynamoDB nor the presence store; presence routes load no fan-out.",
        "",
        "Run to run, a median moves by several milliseconds on this shared machine; the "
        "pairwise range shows how far single pairs of samples spread.",
    ]
    return "\n".join(lines)


def requests_section() -> str:
    rows = requests_per_op.measure()
    return "\n".join(
        [
            f"Command: `{COMMAND}` (alone: `.venv/bin/python -m bench.requests_per_op`). "
            f"Machine-independent. Counted by hooking botocore "
            "(`agent_channel_dev.instruments.request_counter.counting_requests`): requests "
            "really "
            "sent by the handlers, against in-process moto. *posts* are "
            "`post_to_connection` calls.",
            "",
            requests_per_op.markdown(rows),
            "",
            "**Reading it.** The table counts the worst cases: a task with an author, a "
            "disconnect that finds a stale lease, a connect that finds a grace pending. "
            "Every operation is at its minimum:",
            "",
            "- Task transitions (dispatch's running -> delegated, claim_reply, "
            "cancel_offline's cancel) are one transaction each and return the new task "
            "computed from the old one with what the transaction wrote (a transaction "
            "returns no item; the other fields of a task are fixed at creation), so no "
            "GetItem follows. dispatch reads the agent, the topic and the author in one "
            "BatchGetItem, and keeps the ConditionCheck on the presence it read (that "
            "transaction is the minimum for dispatch).",
            "- $connect withdraws the agent-wide grace only when one may be pending: the "
            "last-one-out clear records `grace_scheduled` on the agent item it already "
            "writes, the authorizer reads it with the item it already reads, and the "
            "subscribe transaction removes it. A session-scoped grace is not withdrawn on "
            "connect (recording it would cost a write on every session departure); "
            "cancel_offline's recheck finds the returning session and cancels nothing.",
            "- A heartbeat that restores a reaped lease still withdraws both graces (a "
            "rare path, left as it was).",
            "- Reaping costs one conditional DeleteItem per stale lease; who reaps (one "
            "reaper per stale lease) is issue 17's policy.",
            "- The sweeper's 17 Queries are fixed per sweep (once a minute), whatever the "
            "number of agents; each routed agent then costs a consistent Query, plus a "
            "transaction when it has to be cleared.",
            "- Posts: the lean poster speaks HTTP itself; for this count the routes post "
            "through boto3's client, which sends the same request.",
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
    before = load()
    results = [
        fanout.run_size(size, FANOUT_LATENCY, FANOUT_WORKERS, repeat) for size in FANOUT_SIZES
    ]
    lines = [
        f"Command: `{COMMAND}` (alone: `.venv/bin/python -m bench.fanout --sizes "
        f"{' '.join(map(str, FANOUT_SIZES))} --repeat {repeat}`). Machine: {machine()}. "
        f"Load: {before} at the start, {load()} at the end.",
        "",
        "One stream of N connections behind the project's local `@connections` server "
        "(real HTTP on 127.0.0.1, a child process, "
        f"{FANOUT_LATENCY * 1000:.0f} ms of latency injected per post), "
        f"`fanout.deliver` on {FANOUT_WORKERS} workers, {repeat} timed runs per client after "
        "a warm-up, boto3's client (as fan-out used it: one attempt, pool sized to the "
        "workers, no parameter validation) and the lean poster alternating. *CPU per post* "
        "is this process's CPU time over the run divided by N (the server's is not in "
        "it). *Sequential*: posts one after another through the poster, timed on 200 "
        "connections and scaled to N. *Ideal*: N x latency / workers. *Projected on "
        "Lambda*: a function has memory/1,769 of a vCPU, so N posts take at least "
        "max(ideal, N x CPU per post / that share, N / POSTS_PER_SECOND); the CPU per "
        "post is this machine's, and Lambda's arm64 cores may differ. The poster posts "
        "under the rate budget as deployed (2,500 per second), boto3's client without.",
        "",
        fanout.markdown(results),
        "",
    ]
    for result in results:
        poster = next(t for t in result.timings if t.label == "poster")
        vs_ideal = poster.median / result.ideal
        speedup = result.sequential_seconds / poster.median
        lines.append(
            f"- {result.connections:,} connections: ideal {result.ideal:.3f} s, sequential "
            f"{result.sequential_seconds:.1f} s. Poster: {vs_ideal:.2f}x ideal (aim "
            f"{FANOUT_AIM_VS_IDEAL}x: {'met' if vs_ideal <= FANOUT_AIM_VS_IDEAL else 'not met'}"
            f"), {speedup:.0f}x sequential (aim {FANOUT_AIM_VS_SEQUENTIAL}x: "
            f"{'met' if speedup >= FANOUT_AIM_VS_SEQUENTIAL else 'not met'})."
        )
    lines += [
        "",
        "**Reading it.** The lean poster signs with a cached SigV4 key and writes each "
        "request in one send on a kept-alive socket; its signature is byte-identical to "
        "botocore's (`tests/contract/test_poster_signing.py`), and 410, 429 (with backoff) "
        "and 413 keep their meaning. It costs a fraction of boto3's CPU per post, which is "
        "what bounds fan-out on Lambda's share of a vCPU. On a loaded shared machine the "
        "wall-clock is bounded by the CPU this process gets (the load above), not by the "
        "posts' latency: the CPU per post and the projection are the figures that carry "
        "over. The backend's memory (`BackendMemorySize`, 1,024 MB) is sized so that "
        "10,000 posts stay near the ideal; replay posts at most `MAX_REPLAY_IDS` to one "
        "socket and $default one message, so 256 MB serves both.",
    ]
    return "\n".join(lines)


def moto_beside(result: presence_load.LoadResult) -> list[str]:
    """moto's raw capacity on this machine, and the run's DynamoDB requests per
    second as a fraction of it (the capacity of the run's mix: each request type
    weighted by its share of the run's requests)."""
    capacities = moto_capacity.measure()
    by_kind = {
        "UpdateItem": capacities[0].per_second,
        "Query": capacities[1].per_second,
        "TransactWriteItems": capacities[2].per_second,
    }
    calls = {
        key.split(":", 2)[2]: n
        for key, n in result.counts.items()
        if key.startswith("call:dynamodb:")
    }
    total = sum(calls.values())
    # Other requests (GetItem, DeleteItem, BatchGetItem) cost about an UpdateItem.
    seconds_of_moto = sum(
        n / by_kind.get(operation, by_kind["UpdateItem"]) for operation, n in calls.items()
    )
    mix_capacity = total / seconds_of_moto if seconds_of_moto else 0.0
    served = total / result.seconds if result.seconds else 0.0
    lines = [
        "",
        f"moto's raw capacity on this machine (`.venv/bin/python -m bench.moto_capacity`: "
        f"the local stack's moto server, {moto_capacity.ITEMS} items in the table, "
        f"8 client threads; load: {load()}):",
        "",
        "| request | per second |",
        "| --- | ---: |",
    ]
    lines += [f"| {c.operation} | {c.per_second:.0f} |" for c in capacities]
    lines += [
        "",
        f"This run sent {total:,} DynamoDB requests "
        f"({', '.join(f'{op} {n}' for op, n in sorted(calls.items())) or 'none'}): "
        f"{served:.1f} per second, against a capacity of {mix_capacity:.1f} per second "
        f"for that mix on moto alone: {served / mix_capacity:.0%} of it"
        if mix_capacity
        else "No DynamoDB request was counted.",
    ]
    return lines


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
            if not key.startswith(("metric:", "call:"))
        )
        or "none"
    )
    ops = result.operations
    failures = ", ".join(f"{k} {v}" for k, v in sorted(result.failures.items())) or "none"
    end = result.end_presence
    beside = moto_beside(result)
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
            "**Not yet the benchmark issue 16 asks for.** This is still the short-timing "
            "run of one shared agent (heartbeat 1 s, stale after 10 s), at one arrival "
            "rate: production timings (15 s / 45 s), many agents with a few sessions "
            "each beside one busy agent, a stepped arrival rate with p50/p99 latency and "
            "server-side processed heartbeats are not built. Most failing DeleteItem "
            "answers are reaps of leases another settle already deleted: who reaps is "
            "issue 17's (one reaper per stale lease). moto's own capacity is printed "
            "below, and the run's DynamoDB requests per second as a fraction of it.",
            *beside,
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
        ("cold_start", "Cold start", lambda: cold_start_section(3 if args.quick else 5)),
        ("fanout", "Fan-out", lambda: fanout_section(1 if args.quick else 3)),
        ("requests", "Requests per operation", requests_section),
        (
            "presence",
            "Presence under load",
            lambda: presence_section(50 if args.quick else 200, 5.0 if args.quick else 30.0),
        ),
        ("delivery", "Reliable agent stream: requests", delivery_section),
    ]
    if args.only is None:
        # The whole document comes from this run: start from the header alone.
        DOC.write_text(report.HEADER)
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
