"""A fleet of plugins against the real presence rules, one simulated second at a time.

Each session is a plugin running the reference client's protocol: connect (the
gateway admits at most the account's new-connection rate; a refused upgrade
backs off with the client's own Backoff), a heartbeat right away and then every
``heartbeat_seconds``, a clean close now and then, a crash now and then (no
$disconnect until API Gateway's idle timeout), API Gateway's two-hour cut, and
optionally a storm (every socket dropped at once). Each route runs the real rule
(rules.subscribe, disconnect, sweep; the restore route's rules.heartbeat) inside a
metered Lambda invocation; a heartbeat is API Gateway's own conditional
UpdateItem (the store's touch, no Lambda), and every ``restore_every``-th beat a
restore; the sweeper runs every minute, fanned out as the deployed one is, each
invocation within the deployed one's time budget, handing what it could not
finish to a continuation.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agent_channel import clock
from agent_channel.config import Settings
from agent_channel.identity.tokens import mint_lease_token
from agent_channel.presence import rules, sweep_plan
from agent_channel.presence.model import Subscription
from agent_channel.storage import schema
from agent_channel_dev import client
from agent_channel_dev.client import Backoff
from agent_channel_dev.scale import aws
from agent_channel_dev.scale.memory_store import MemoryPresenceStore
from agent_channel_dev.scale.meter import Meter
from agent_channel_dev.scale.scheduler import MemoryGraceScheduler

EPOCH = 1_800_000_000.0
DISCONNECTS_PER_SECOND = 10_000
"""How fast API Gateway's $disconnects of a mass drop are processed: half the
account's default Lambda concurrency (1,000) at about 50 ms each. A model
assumption: API Gateway documents no delivery rate for $disconnect."""


@dataclass(frozen=True)
class Scenario:
    agents: int
    minutes: int = 12
    heartbeat_seconds: int = 30
    stale_after_seconds: int = 45
    grace_seconds: int = 30
    second_session_share: float = 0.2
    """Share of agents with a second plugin session (siblings)."""
    closes_per_hour: float = 0.25
    """Clean closes per session-hour (a laptop lid, a restart); back after ``away_seconds``."""
    away_seconds: int = 600
    crashes_per_hour: float = 0.05
    """Crashes per session-hour: no $disconnect until API Gateway's idle timeout."""
    storm_at_minute: int | None = 6
    restore_every: int = 10
    """The client's safety net: every this many beats a restore (the Lambda route)
    instead of a heartbeat (API Gateway's own UpdateItem, no Lambda)."""
    lambda_heartbeats: bool = False
    """The design before: every heartbeat a Lambda (touch, else restore)."""
    sweep_workers: int = 16
    sweep_budget_seconds: float = aws.SWEEPER_TIMEOUT_SECONDS - sweep_plan.SWEEP_MARGIN_SECONDS
    """How long a sweep invocation may start settles for before it hands the rest
    to a continuation (the deployed function: its timeout less the margin)."""
    until_settled: bool = False
    """With a storm: end the run with the minute the storm settles in (every
    dropped session connected again); ``minutes`` is then the longest run."""
    new_connections_per_second: int = int(aws.QUOTAS["new_connections_per_second"].value)
    seed: int = 17


@dataclass
class _Session:
    agent_id: int
    session_id: str
    generation: int = 0
    connection_id: str | None = None
    connected_at: float = 0.0
    failures: int = 0
    crashed: bool = False
    subscription: Subscription = field(default_factory=lambda: Subscription("", 0, 0, ""))
    dropped_connection_id: str | None = None
    beats: int = 0


@dataclass
class Outcome:
    scenario: Scenario
    meter: Meter
    unroute_seconds: list[float] = field(default_factory=list)
    storm_settle_seconds: float | None = None
    storm_sessions: int = 0
    sweep_longest_ms: float = 0.0
    sweep_continuations: int = 0
    continuation_longest_ms: float = 0.0
    sweep_longest_chain: int = 0
    """The most continuations one sweep invocation's chain made."""
    sweep_chains_cut: int = 0
    """Sweeps that stopped at their budget as the last hop of their chain: the
    rest waited for the next minute's sweep."""
    errors: list[str] = field(default_factory=list)
    connected_at_end: int = 0
    storm_waiting_at_end: int = 0
    storm_elapsed: float = 0.0
    minutes_simulated: int = 0


class _Quiet:
    """The rules' logger, silenced: a million agents would log for hours."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors

    def info(self, *args: Any, **kwargs: Any) -> None:
        pass

    warning = info

    def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.errors.append(message)


@contextmanager
def _simulated_time(errors: list[str], seed: int) -> Iterator[list[float]]:
    now = [EPOCH]
    patches = {
        (clock, "now"): lambda: now[0],
        (rules, "logger"): _Quiet(errors),
        (rules, "count"): lambda *args, **kwargs: None,
        # The client's Backoff jitters with the process's shared generator, which
        # nothing seeds: a generator of its own, seeded, makes a storm's retries
        # (and so every figure after a storm) the same from one run to the next,
        # without moving the simulation's own draws.
        (client, "random"): random.Random(seed + 1),
    }
    saved = {target: getattr(*target) for target in patches}
    for (module, name), value in patches.items():
        setattr(module, name, value)
    try:
        yield now
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


class Simulation:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.random = random.Random(scenario.seed)
        self.meter = Meter()
        self.store = MemoryPresenceStore(self.meter)
        self.scheduler = MemoryGraceScheduler(self.meter)
        self.settings = Settings.from_env()._replace(
            heartbeat_seconds=scenario.heartbeat_seconds,
            stale_after_seconds=scenario.stale_after_seconds,
            grace_seconds=scenario.grace_seconds,
            sweep_workers=scenario.sweep_workers,
        )
        self.backoff = Backoff()
        self.events: dict[int, list[tuple[str, int, int]]] = {}
        self.sessions: list[_Session] = []
        self.outcome = Outcome(scenario, self.meter)
        self.crashed_at: dict[int, float] = {}
        self.live_sessions: dict[int, int] = {}
        self.connected = 0
        self.storm_waiting: set[int] = set()
        self.storm_started = 0.0
        self._connection_serial = 0
        self.continuations: dict[int, list[sweep_plan.Worker]] = {}
        """Second -> sweep continuations that start in it."""

    # -- the fleet ---------------------------------------------------------------------
    def _at(self, second: int, kind: str, index: int) -> None:
        session = self.sessions[index]
        self.events.setdefault(second, []).append((kind, index, session.generation))

    def _populate(self) -> None:
        for agent_id in range(1, self.scenario.agents + 1):
            self.store.add_agent(agent_id)
            count = 2 if self.random.random() < self.scenario.second_session_share else 1
            self.live_sessions[agent_id] = 0
            for number in range(count):
                self.sessions.append(_Session(agent_id, f"{agent_id}-{number}"))
        # The fleet is up, in its steady state, before anything is measured: each
        # socket already some way into its two hours, heartbeats at random phases.
        duration = int(aws.QUOTAS["connection_duration_seconds"].value)
        for index in range(len(self.sessions)):
            self._open(0, index, quietly=True)
            # Restores at every phase of the client's count, spread without a
            # random draw (the other draws, and so every other figure, stay put).
            if self.scenario.restore_every:
                self.sessions[index].beats = index % self.scenario.restore_every
            self._at(self.random.randrange(1, duration), "cut", index)
            self._at(self.random.randrange(1, self.scenario.heartbeat_seconds + 1), "beat", index)
            self._draw_departure(0, index)
        self.meter.reset()

    def _connects(self, second: int, connects: list[int]) -> None:
        """This second's upgrade attempts, in random order: the gateway admits the
        account's new-connection rate and refuses the rest. In a storm at a million
        agents that is thousands of refusals a second, hence the plain loop."""
        self.random.shuffle(connects)
        sessions = self.sessions
        events = self.events
        backoff = self.backoff
        room = self.scenario.new_connections_per_second
        attempts = 0
        for index in connects:
            session = sessions[index]
            if session.connection_id is not None:
                continue
            attempts += 1
            if room > 0:
                room -= 1
                self._connect(second, index)
                continue
            # 429 on the upgrade: the client backs off as after any failed attempt.
            session.failures += 1
            delay = backoff.delay(session.failures, throttled=True)
            retry = ("connect", index, session.generation)
            events.setdefault(second + max(1, round(delay)), []).append(retry)
        if attempts:
            self.meter.add("connect_attempts", attempts)

    def _connect(self, second: int, index: int) -> None:
        """An admitted upgrade: authorizer, $connect, the first heartbeat."""
        self.meter.add("new_connections")
        self._open(second, index)
        self._beat(second, index)
        duration = int(aws.QUOTAS["connection_duration_seconds"].value)
        self._at(second + duration, "cut", index)
        self._draw_departure(second, index)

    def _open(self, second: int, index: int, *, quietly: bool = False) -> None:
        """The authorizer and $connect of an admitted socket; ``quietly``, the state
        a subscribe leaves, written straight into the store (the fleet's set-up,
        which is not measured)."""
        session = self.sessions[index]
        self._connection_serial += 1
        session.connection_id = f"c{self._connection_serial}="
        session.generation += 1
        session.connected_at = float(second)
        session.subscription = Subscription(
            session.connection_id, 0, session.agent_id, session.session_id
        )
        self.connected += 1
        self.live_sessions[session.agent_id] += 1
        if quietly:
            self.store.connections[session.connection_id] = f"agent:{session.agent_id}"
            self.store.turn_on(session.subscription, mint_lease_token(), EPOCH + second)
            return
        with self.meter.invocation("authorize"):
            self.meter.dynamodb("BatchGetItem", rru=2.0)  # token digest + agent, consistent
        with self.meter.invocation("connect"):
            rules.subscribe(self.store, self.scheduler, session.subscription)
        self.crashed_at.pop(session.agent_id, None)
        self.storm_waiting.discard(index)

    def _draw_departure(self, second: int, index: int) -> None:
        scenario = self.scenario
        rate = (scenario.closes_per_hour + scenario.crashes_per_hour) / 3600
        if rate <= 0:
            return
        after = self.random.expovariate(rate)
        if after > scenario.minutes * 60:
            return
        crash = self.random.random() < scenario.crashes_per_hour / (
            scenario.closes_per_hour + scenario.crashes_per_hour
        )
        self._at(second + max(1, int(after)), "crash" if crash else "close", index)

    def _beat(self, second: int, index: int) -> None:
        """A session's heartbeat (its first, on connecting; the rest are taken in
        _tick the same way)."""
        session = self.sessions[index]
        self.meter.add("messages")
        session.beats += 1
        every = self.scenario.restore_every
        subscription = session.subscription
        if self.scenario.lambda_heartbeats or (every and session.beats % every == 0):
            self._restore(session)
        else:
            # API Gateway's own conditional UpdateItem: no Lambda, and a lease
            # that is gone stays gone until the next restore.
            self.store.touch(subscription.agent_id, subscription.connection_id, clock.now())
        self._at(second + self.scenario.heartbeat_seconds, "beat", index)

    def _restore(self, session: _Session) -> None:
        """The client's safety net, every ``restore_every``-th beat: a restore (a
        Lambda: renew, else restore); with ``lambda_heartbeats``, every beat."""
        function = "heartbeat" if self.scenario.lambda_heartbeats else "restore"
        with self.meter.invocation(function):
            rules.heartbeat(self.store, self.scheduler, session.subscription)

    def _gateway_disconnect(self, index: int) -> None:
        """API Gateway's $disconnect for the session's socket."""
        session = self.sessions[index]
        assert session.connection_id is not None
        with self.meter.invocation("disconnect"):
            rules.disconnect(
                self.store,
                self.scheduler,
                self.settings,
                connection_id=session.connection_id,
                stream=f"agent:{session.agent_id}",
                agent_id=session.agent_id,
                holds_lease=True,
            )
        session.connection_id = None

    def _storm_disconnect(self, index: int) -> None:
        """The dropped socket's $disconnect, late: the client may already have a new
        socket (its own new connection id), which this does not touch."""
        session = self.sessions[index]
        current = session.connection_id
        session.connection_id = session.dropped_connection_id
        self._gateway_disconnect(index)
        session.connection_id = current

    def _drop(self, index: int) -> None:
        session = self.sessions[index]
        session.generation += 1  # its pending heartbeats and departures are void
        session.dropped_connection_id = session.connection_id
        if not session.crashed:
            self.connected -= 1
            self.live_sessions[session.agent_id] -= 1

    def _handle(self, second: int, kind: str, index: int) -> None:
        session = self.sessions[index]
        if kind == "beat":
            self._beat(second, index)
        elif kind == "close":
            self._drop(index)
            self._gateway_disconnect(index)
            self._at(second + self.scenario.away_seconds, "connect", index)
        elif kind == "cut":
            # API Gateway ends every connection after two hours; the client comes
            # straight back (a long-lived connection resets its backoff).
            self._drop(index)
            self._gateway_disconnect(index)
            session.failures = 0
            self._at(second + max(1, round(self.backoff.delay(0))), "connect", index)
        elif kind == "crash":
            self._drop(index)
            session.crashed = True
            if self.live_sessions[session.agent_id] == 0:
                self.crashed_at.setdefault(session.agent_id, float(second))
            idle = int(aws.QUOTAS["idle_timeout_seconds"].value)
            self._at(second + idle, "idle_timeout", index)
        elif kind == "idle_timeout":
            self._gateway_disconnect(index)
            session.crashed = False
            self._at(second + self.scenario.away_seconds, "connect", index)
        elif kind == "storm_disconnect":
            pass  # handled in _tick, whatever the session's generation
        elif kind == "connect":
            raise AssertionError("connects are admitted in _tick")

    def _storm(self, second: int) -> None:
        """Every socket dropped at once (a regional blip, a gateway deploy): API
        Gateway delivers each $disconnect, and every client comes back with backoff."""
        self.storm_started = float(second)
        delivered = 0
        for index, session in enumerate(self.sessions):
            if session.connection_id is None or session.crashed:
                continue
            self._drop(index)
            session.connection_id = None
            # API Gateway delivers the $disconnects as fast as Lambda takes them.
            self._at(second + delivered // DISCONNECTS_PER_SECOND, "storm_disconnect", index)
            delivered += 1
            self.storm_waiting.add(index)
            session.failures = 0
            self._at(second + max(1, round(self.backoff.delay(0))), "connect", index)
        self.outcome.storm_sessions = len(self.storm_waiting)

    # -- the sweeper -------------------------------------------------------------------
    def _sweep(self, second: int) -> None:
        groups = sweep_plan.shard_groups(self.scenario.sweep_workers)
        with self.meter.invocation("sweeper"):
            rules.pay_owed_graces(self.store, self.scheduler)
            for _ in groups:
                self.meter.call("lambda", "Invoke")
        for shards in groups:
            self._sweep_worker(second, sweep_plan.Worker(tuple(shards)))

    def _sweep_worker(self, second: int, worker: sweep_plan.Worker) -> None:
        """One worker invocation as functions/sweeper runs it on Lambda: it sweeps
        until its time budget runs out, then hands the rest to a continuation,
        which starts once this invocation has ended and its event has been queued
        (it then sweeps the leases as they are by that second)."""
        meter = self.meter
        budget_ms = self.scenario.sweep_budget_seconds * 1000
        with meter.invocation("sweeper"):
            swept = rules.sweep(
                self.store,
                self.scheduler,
                self.settings,
                worker.shards,
                resume=worker.resume,
                budget=lambda: (budget_ms - meter.elapsed_ms) / 1000,
            )
            handed_on = bool(swept.rest) and worker.hop < sweep_plan.MAX_SWEEP_HOPS
            if handed_on:
                meter.call("lambda", "Invoke")
                meter.add("sweep_continuations")
            elif swept.rest:
                meter.add("sweep_chains_cut")
            elapsed_ms = meter.elapsed_ms
        outcome = self.outcome
        if worker.hop:
            outcome.continuation_longest_ms = max(
                outcome.continuation_longest_ms, float(math.ceil(elapsed_ms))
            )
            outcome.sweep_longest_chain = max(outcome.sweep_longest_chain, worker.hop)
        if handed_on:
            starts = second + math.ceil((elapsed_ms + aws.ASYNC_INVOKE_START_MS) / 1000)
            rest = sweep_plan.Worker(swept.rest, swept.resume, worker.hop + 1)
            self.continuations.setdefault(starts, []).append(rest)

    def _note_unrouted(self, second: int) -> None:
        for agent_id in self.store.cleared:
            crashed = self.crashed_at.pop(agent_id, None)
            if crashed is not None:
                self.outcome.unroute_seconds.append(second - crashed)
        self.store.cleared.clear()

    # -- the run -----------------------------------------------------------------------
    def _tick(self, second: int) -> None:
        self.meter.second = second
        now = clock_now[0] = EPOCH + second
        due = self.events.pop(second, [])
        connects = []
        # Plain heartbeats, most of the events (40,000 a second at a million
        # agents), are taken here rather than in _beat and their touches applied
        # in batches: each batch before the next event of any other kind, so every
        # rule still sees the leases exactly as it would one beat at a time.
        sessions = self.sessions
        store = self.store
        next_beats = self.events.setdefault(second + self.scenario.heartbeat_seconds, [])
        every = 0 if self.scenario.lambda_heartbeats else self.scenario.restore_every
        lambda_beats = self.scenario.lambda_heartbeats
        touches: list[tuple[int, str]] = []
        beats = 0
        for event in due:
            kind, index, generation = event
            if kind == "beat":
                session = sessions[index]
                if generation != session.generation:
                    continue
                beats += 1
                session.beats += 1
                if lambda_beats or (every and session.beats % every == 0):
                    if touches:
                        store.touch_all(touches, now)
                        touches = []
                    self._restore(session)
                else:
                    subscription = session.subscription
                    touches.append((subscription.agent_id, subscription.connection_id))
                next_beats.append(event)  # the session's next beat, same generation
                continue
            if touches:
                store.touch_all(touches, now)
                touches = []
            if kind == "connect":
                connects.append(index)
            elif kind == "storm_disconnect":
                self._storm_disconnect(index)
            elif generation == sessions[index].generation:
                self._handle(second, kind, index)
        if touches:
            store.touch_all(touches, now)
        if beats:
            self.meter.add("messages", beats)
        self._connects(second, connects)
        if second % 60 == 0 and second > 0:
            self._sweep(second)
        for worker in self.continuations.pop(second, ()):
            self._sweep_worker(second, worker)
        fired = self.scheduler.fire_due(EPOCH + second)
        if fired:
            self.meter.add("scheduler_invocations", fired)
            for _ in range(fired):
                with self.meter.invocation("cancel_offline"):
                    self.meter.dynamodb("Query", rru=1.0)  # presence recheck
        self.meter.add("connection_minutes", self.connected / 60)
        self._note_unrouted(second)
        settling = self.storm_started and self.outcome.storm_settle_seconds is None
        if settling and not self.storm_waiting:
            self.outcome.storm_settle_seconds = second - self.storm_started

    def run(self, progress: Callable[[int, int, int], None] | None = None) -> Outcome:
        """``progress(minute, connected, storm_waiting)`` after each simulated minute:
        a run at a million agents takes most of an hour."""
        global clock_now
        scenario = self.scenario
        simulated = 0
        with _simulated_time(self.outcome.errors, scenario.seed) as now:
            clock_now = now
            self._populate()
            storm = scenario.storm_at_minute
            for second in range(scenario.minutes * 60):
                if storm is not None and second == storm * 60 + 30:
                    self._storm(second)
                self._tick(second)
                simulated = second + 1
                if progress is not None and simulated % 60 == 0:
                    progress(simulated // 60, self.connected, len(self.storm_waiting))
                settled = self.outcome.storm_settle_seconds is not None
                if scenario.until_settled and settled and simulated % 60 == 0:
                    break  # a whole minute, so the per-minute table's last row is one
        self.outcome.minutes_simulated = simulated // 60
        self.outcome.sweep_longest_ms = self.meter.longest_ms.get("sweeper", 0.0)
        self.outcome.sweep_continuations = int(self.meter.total("sweep_continuations"))
        self.outcome.sweep_chains_cut = int(self.meter.total("sweep_chains_cut"))
        self.outcome.connected_at_end = self.connected
        self.outcome.storm_waiting_at_end = len(self.storm_waiting)
        if self.storm_started:
            self.outcome.storm_elapsed = simulated - self.storm_started
        return self.outcome


clock_now: list[float] = [EPOCH]


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def routed_shards_in_use() -> int:
    return schema.ROUTED_SHARDS
