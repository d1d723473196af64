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
    presence_steps,
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
        classes_cpu, classes = cold_start.dataclass_cost(layers, worst.function)
    lines = [
        f"Command: `{COMMAND}` (alone: `.venv/bin/python -m bench.cold_start --repeat "
        f"{repeat} --stack-offsets {cold_start.STACK_OFFSETS}`). Machine: {machine()}. "
        f"Load: {before} at the start, {load()} at the end.",
        "",
        "The layer is built by `lib/Makefile` (the target `sam build` runs for "
        "`BuildMethod: makefile`) into a temporary folder, with this interpreter; each "
        "function's `app.py` is imported from a folder of its own, as from `/var/task`, "
        "with `PYTHONDONTWRITEBYTECODE` (Lambda's `/opt` and `/var/task` are read-only) "
        "and without site-packages, and with the variables Lambda's runtime sets "
        "(`LAMBDA_TASK_ROOT` among them: with it the X-Ray SDK builds no sampling "
        "client, as in Lambda, where the trace header decides). Each figure is the CPU "
        "time (`time.process_time`) of "
        f"a fresh interpreter, the median of {repeat}; function, floor and no-bytecode "
        "samples alternate, so drifting load hits every column alike. The rounds start "
        f"at {cold_start.STACK_OFFSETS} depths spread over one of CPython's 16 KiB "
        "frame-stack chunks, function and floor alike: where a chunk's edge falls "
        "decides how often an import maps and unmaps one (some 9 ms of CPU at a bad "
        "depth), and on Lambda it falls where the runtime's depth puts it, not where "
        "the benchmark's does (`docs/PERFORMANCE.md`).",
        "",
        "*Function*: `import app`, which builds the function's clients at init, plus "
        "PynamoDB's DynamoDB client where the function uses DynamoDB (the project builds "
        "it at init from the shared botocore session; a function that does not is charged "
        "it here, as its first request would be). *Floor*: `import boto3` and creating "
        "the same clients with `boto3.client` (the lean poster counts as the "
        "`apigatewaymanagementapi` client it replaces). *Without bytecode*: the function again, "
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
        f"Of `{worst.function}`'s init, {_ms(classes_cpu)} of CPU went to making its "
        f"{classes} dataclasses (the median of 3; `bench.cold_start.dataclass_cost`).",
        "",
        f"**Reading it.** {met} of {len(rows)} functions meet the aim in this run. What "
        "took them there:",
        "",
        "- *A wrapt without asyncio* (`lib/constraints.txt`): the X-Ray SDK patches "
        "through wrapt, and wrapt 2 imports asyncio from its package, about 7 ms of CPU "
        "at every traced cold start for an event loop no handler runs. The layer and "
        "the development venv install wrapt 1.17; "
        "`tests/contract/test_layer_build.py` checks the layer's tracer loads no asyncio.",
        "- *Rare ops load on first use*: the backend imports `unregister_agent`'s and "
        "`create_task`'s account records, and the acting-user checks, only when one "
        "runs, so a backend that dispatches and decides never loads them.",
        "- *Bytecode in the layer*: without it every cold start compiles botocore, "
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
        "- *No boto3 at all*: every client is made by that botocore session "
        "(`wiring._client`). boto3 adds nothing to a low-level client, and its import "
        "(with s3transfer's) cost about 12 ms of CPU at every cold start; "
        "`tests/contract/test_cold_start.py` checks that no function imports it.",
        "- *No @connections client from boto3*: the lean poster (`delivery.poster`) is "
        "built from the standard library and environment credentials, without a request "
        "or a client model; replay, $default and backend build no boto3 client for it.",
        "- *Lazy imports*: each wiring factory imports what it builds; $default loads "
        "neither PynamoDB nor the presence store; presence routes load no fan-out.",
        "- *Value types as NamedTuples*: on Python 3.12 a frozen dataclass costs about "
        "0.5 ms of CPU to define (its generated methods compiled one by one), a "
        "NamedTuple about 0.08 ms; the backend's init made 31 dataclasses, now 6, three "
        "of them the libraries' (`tests/contract/test_cold_start.py` bounds the count).",
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
    labels = list(fanout.CLIENTS)
    results = [
        fanout.run_size(size, FANOUT_LATENCY, FANOUT_WORKERS, repeat, labels)
        for size in FANOUT_SIZES
    ]
    lines = [
        f"Command: `{COMMAND}` (alone: `nice .venv/bin/python -m bench.fanout --sizes "
        f"{' '.join(map(str, FANOUT_SIZES))} --repeat {repeat}`). Machine: {machine()}. "
        f"Load: {before} at the start, {load()} at the end.",
        "",
        "One stream of N connections behind the project's local `@connections` server "
        "(real HTTP on 127.0.0.1, a child process, "
        f"{FANOUT_LATENCY * 1000:.0f} ms of latency injected per post), "
        f"`fanout.deliver` on {FANOUT_WORKERS} workers, {repeat} timed runs per client after "
        "a warm-up, the clients alternating in one run: boto3's client (as fan-out used "
        "it: one attempt, pool sized to the workers, no parameter validation); `stdlib`, "
        "the poster of `delivery.poster` (what the functions use); `stdlib+trace`, the "
        "same with X-Ray tracing on (a recorder whose documents are serialized and "
        "dropped); `crt`, awscrt's HTTP client with the same signer "
        "(`bench/crt_poster.py`). *CPU per post* is this process's CPU time over the run "
        "divided by N (the server's is not in it). *Sequential*: posts one after another "
        "through the poster, timed on 200 connections and scaled to N. *Ideal*: N x "
        "latency / workers. *Projected on Lambda*: a function has memory/1,769 of a "
        "vCPU, so N posts take at least max(ideal, N x CPU per post / that share, N / "
        "POSTS_PER_SECOND); the CPU per post is this machine's, and Lambda's arm64 cores "
        "may differ. The posters post under the rate budget as deployed (2,500 per "
        "second), boto3's client without.",
        "",
        fanout.markdown(results),
        "",
    ]
    for result in results:
        timings = {timing.label: timing for timing in result.timings}
        poster = timings["stdlib"]
        vs_ideal = poster.median / result.ideal
        speedup = result.sequential_seconds / poster.median
        low, high = min(poster.seconds) / result.ideal, max(poster.seconds) / result.ideal
        traced_timing = timings["stdlib+trace"]
        traced = traced_timing.cpu_median - poster.cpu_median
        spread = max(
            max(poster.cpu_per_post) - min(poster.cpu_per_post),
            max(traced_timing.cpu_per_post) - min(traced_timing.cpu_per_post),
        )
        budgeted = poster.median / result.budgeted_ideal
        lines.append(
            f"- {result.connections:,} connections: ideal {result.ideal:.3f} s, sequential "
            f"{result.sequential_seconds:.1f} s. Poster: {vs_ideal:.2f}x ideal (runs "
            f"{low:.2f}-{high:.2f}x; aim {FANOUT_AIM_VS_IDEAL}x: "
            f"{'met' if vs_ideal <= FANOUT_AIM_VS_IDEAL else 'not met'}), {speedup:.0f}x "
            f"sequential (aim {FANOUT_AIM_VS_SEQUENTIAL}x: "
            f"{'met' if speedup >= FANOUT_AIM_VS_SEQUENTIAL else 'not met'}); "
            f"{budgeted:.2f}x the ideal under the rate budget as deployed "
            f"({result.budgeted_ideal:.3f} s: no faster than POSTS_PER_SECOND). Tracing "
            f"on: {traced * 1000:+.3f} ms of CPU per post (medians; the runs of either "
            f"spread over {spread * 1000:.3f} ms). Projected at the deployed memory: "
            + ", ".join(
                f"{name} ({mb} MB) {result.projected(poster, mb):.2f} s"
                for name, mb in fanout.DEPLOYED_MEMORY_MB.items()
            )
            + "."
        )
    lines += [
        "",
        "**Reading it.** The poster signs with a cached SigV4 key, writes each request "
        "in one send on a kept-alive socket and reads the answer with a minimal HTTP/1.1 "
        "parser; fan-out's threads take the next connection from one shared iterator, "
        "with no future per post. Its signature is byte-identical to botocore's "
        "(`tests/contract/test_poster_signing.py`), its answers read as `http.client` "
        "reads them (`tests/contract/test_poster_answers.py`), and 410, 429 (with "
        "backoff) and 413 keep their meaning. awscrt's client moves the HTTP work to C, "
        "but each post still takes the interpreter lock three times on its event-loop "
        "thread (the body read and two callbacks), which costs more than the work it "
        "moves. At 10,000 connections the rate budget as deployed (2,500 posts a "
        "second, the process's share of the account's quota) bounds any client at 4.0 s, "
        "1.28x the latency ideal, before any CPU is spent. Tracing adds 20 subsegments "
        "and one summary per fan-out, whatever its size: its CPU per post is within the "
        "runs' spread. On a loaded shared machine the wall-clock is bounded by the CPU this "
        "process gets (the load above), not by the posts' latency: the CPU per post and "
        "the projection are the figures that carry over. The backend's and the fan-out "
        "worker's memory (`BackendMemorySize`, `FanoutMemorySize`, 1,024 MB) keep 10,000 "
        "posts at the rate budget's bound; a stream over `FANOUT_INVOCATION_MEMBERS` "
        '(5,000) is split across workers (docs/PERFORMANCE.md, "Very large streams").',
    ]
    return "\n".join(lines)


def presence_section(plan: presence_steps.Plan) -> str:
    before = load()
    result = presence_steps.run(plan)
    below = [step for step in result.steps if not step.past_knee]
    routes = sum(sum(step.mix.values()) for step in result.steps)
    background = sum(step.all_requests for step in result.steps) - routes
    goal = presence_steps.goals(result)
    return "\n".join(
        [
            f"Command: `{COMMAND}` (this section alone: `.venv/bin/python -m bench --only "
            f"presence`; the table alone: `{plan.command()}`; `make bench-load`). "
            f"Machine: {machine()}. Load: {before} at the start, {load()} at the end "
            "(each step's in the text below the tables).",
            "",
            f"The local stack (`agent-channel dev --port 0`: gateway and schedule loop "
            f"in one process, moto in one of its own, every function in worker processes "
            f"of its own) with production timings: heartbeat {plan.heartbeat_seconds} s, stale "
            f"after {plan.stale_after_seconds} s, grace {plan.grace_seconds} s. The "
            "template's default heartbeat is 30 s; 15 s is what issue 16 asks for and "
            "doubles the heartbeat traffic, so it is the harder case. Real WebSocket "
            "clients (`websockets`, one asyncio loop, loopback) arrive as a Poisson "
            f"process at each step's rate for {plan.step_seconds:g} s, each as one of "
            f"{result.agents} agents (2 or 3 session slots each), heartbeat every "
            f"{plan.heartbeat_seconds} s and disconnect after "
            f"{plan.lifetime[0]:g}-{plan.lifetime[1]:g} s. The stepping stops at the "
            "first step past the knee (a client timeout or failure, fewer than 90% of "
            "arrivals connected, or a connect p99 over 4x the first step's). Then one "
            f"busy agent with {plan.busy_sessions} session slots runs a step of its "
            "own, measured separately (last row).",
            "",
            "*Connect* is the client's wait for the upgrade (authorizer, then "
            "`$connect`); a heartbeat has no answer and `$disconnect` runs after the "
            "close, so theirs are the server's. The heartbeat runs no Lambda: the "
            "route's DynamoDB integration renews the lease (`HeartbeatIntegration`, "
            "timed from its call to DynamoDB's answer); `$disconnect`'s is the "
            "gateway's invocation, from the close to the function's answer, waiting "
            "for a free worker included. Requests are counted where moto serves them, "
            "by the function (or integration) whose key signed them "
            "(`bench/stack_accounting.py`); *requests per* "
            "connect counts the authorizer's and `$connect`'s. *Client timeouts*: "
            f"connects over {presence_steps.CONNECT_TIMEOUT:g} s (the reference "
            "client's `open_timeout`) and API Gateway's 'Endpoint request timed out' "
            "frames. *Route requests/s* are the routes' (the sweeper, redelivery, "
            "backend and the stack's own stream polling excluded, listed below); "
            "*moto capacity for the mix* is what moto alone serves for that step's "
            "mix of requests (`bench/moto_capacity.py`: moto alone in a process of "
            "its own, loaded by the driver's client threads, the stack stopped; each "
            "transaction charged at the probe's rate for its number of items), "
            "probed on copies of the stack's table as the step found "
            "it (as the previous step left it) and as it left it: moto's cost per "
            "request grows with the table, which grows during a step as its sessions "
            "arrive, so the step's capacity lies between the two. The probes on the "
            "idle table before and after the steps are in brackets. The *fraction of "
            "moto* is the route requests over the step's two capacities; the goal "
            "asks the whole range. *moto busy* is the "
            "share of the step the stack's moto held its one-request lock. *CPU cores*: "
            "the stack's process (gateway, `@connections`, pipe, schedule loop), moto's "
            "process and the functions' worker processes.",
            "",
            presence_steps.markdown(result),
            "",
            "*Invariants* are checked twice, while the sessions are held open "
            "(heartbeating) and after every socket closed, each time once the stack "
            "is idle: no invocation in flight, no frame queued, no upgrade or close "
            "in progress, twice in a row with no connect or disconnect between "
            f"(waited for up to {presence_steps.IDLE_BOUND:g} s; the wait is given "
            "above). Each agent's presence is compared with what the server knows, "
            "the gateway's open sockets, not with what the clients believe. Protocol "
            "violations: routing on with no lease, a live lease with routing off, a "
            "lease whose connection the gateway closed and sent its `$disconnect` "
            "for, a held (heartbeating) session without a live lease. Apart: "
            "disagreements from connects a client abandoned at its timeout while the "
            "server completed them (the gateway then sends that connection's "
            "`$disconnect`, as API Gateway does, best effort: until it has run, "
            "or if it fails, the lease waits for the sweeper), leases a failed `$connect` (timed "
            "out after its writes: refused, so no `$disconnect` comes) or a failed "
            "`$disconnect` left (the sweeper's), and any disagreement nothing "
            "explains (counted against the goal).",
            "",
            f"**Goals.** {goal}",
            "",
            "**Reading it.** moto serves one request at a time (atomicity, `moto_server.py`), "
            "and its TransactWriteItems deep-copies the whole table as its rollback copy, so "
            "its cost grows with the table's items and their size (the raw capacity before and "
            "after, above). moto copies it once per item of the transaction, nearly all of a "
            "transaction's cost: a `$connect`'s six items copied the table six times. The local "
            "stack copies each table once per transaction, the same rollback "
            "(`_copying_each_table_once`), and the probe's moto is the same server. Connects "
            "(one transaction) and disconnects (one or two) pay it; a heartbeat is one "
            "UpdateItem (the command prints moto's time per request by operation, per step). "
            "What the fraction leaves out is the background: the sweeper and redelivery "
            "each send one Query per routed agent every minute, whatever the arrival rate, "
            "each grace that fires one more, "
            "and the stack's own stream and schedule polling (AWS's Pipes and Scheduler, "
            "which on AWS cost the table nothing) hold moto's lock too: over the steps the "
            f"background sent {background:,} requests and the routes {routes:,} (by sender, "
            "above). AWS serves it all beside the routes, moto between "
            "them; the goals give the background's share of moto's busy time (each "
            "operation's busy time shared out by its senders). A Query reads one "
            "partition (moto's sorted every item of the table first: `moto_costs.py`), so "
            "the sweeper's and redelivery's cost moto about what a heartbeat's UpdateItem "
            "does. An index of leases by expiry would let the sweeper read only what is "
            "stale, but on AWS every heartbeat would write it too, more than the reads it "
            "saves; one of dispatches by their next delivery would cut redelivery's reads "
            "at a write per dispatch: not done. "
            "The functions a step invokes have their workers started before the steps "
            "(provisioned concurrency): a cold start here takes its CPU from every other "
            "invocation on the machine's cores, where Lambda gives it an environment of "
            "its own, and under a rising load the cold starts fed on each other (the "
            "cold starts that still happen are listed above). "
            "The stack's moto runs in a process of its own, as the probe's does "
            "(`moto_process.py`): in the stack's process it shared one interpreter lock "
            "with the gateway, and a transaction took there 1.7 times what it takes alone. "
            "It still shares the machine's two cores with the stack, the workers and the "
            "driver's clients, where DynamoDB has its own: its busy time (lock held) exceeds "
            "its CPU time by the time it waits for a core. What was the local stack's, and "
            "is fixed: moto's table kept an empty partition for every key a request ever "
            "named (each connection's, each token's), and every rollback copy copied them "
            "(`moto_costs.py`); moto "
            "keeps every model object it ever made for its dashboard, the rollback copies of the "
            "table each transaction makes included, and every stream iterator it returned; the "
            "stack process grew by millions of objects in a run, and its full garbage collections "
            "to a second and more, every request waiting. The stack now drops that tracking, "
            "expires iterators after DynamoDB's 15 minutes, freezes what it built at start out of "
            "the collector's way, and a rollback copy shares the stream's records rather than "
            "copying their images (a backlog the pipe had not trimmed yet made every transaction "
            "slower, which let the backlog grow: `MotoServer.upkeep`). The task-event pipe reads "
            "on from its last iterator, one GetRecords a poll, and trims what it has read "
            "(`MotoServer.trim_stream`); the Scheduler loop lists every page and reads a schedule "
            "only when it changed. "
            "The probe's figures are moto's alone: it serves from a process of its own, "
            "where the client threads that load it do not share its interpreter, and each "
            "transaction size the routes send is probed, so a step's "
            "mix is charged for the sizes it sent. "
            "Requests per operation are at the minimum the requests table gives. "
            + (
                f"The last step below the knee is {below[-1].record.name}."
                if below
                else "No step was below the knee."
            ),
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
        (
            "cold_start",
            "Cold start",
            lambda: cold_start_section(3 if args.quick else cold_start.STACK_OFFSETS),
        ),
        ("fanout", "Fan-out", lambda: fanout_section(1 if args.quick else 3)),
        ("requests", "Requests per operation", requests_section),
        (
            "presence",
            "Presence under load",
            lambda: presence_section(presence_steps.QUICK if args.quick else presence_steps.Plan()),
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
