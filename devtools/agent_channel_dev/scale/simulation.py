"""A fleet of plugins against the real presence rules, one simulated second at a time.

Each session is a plugin running the reference client's protocol: connect (the
gateway admits at most the account's new-connection rate; a refused upgrade
backs off with the client's own Backoff), a heartbeat right away and then every
``heartbeat_seconds``, a clean close now and then, a crash now and then (no
$disconnect until API Gateway's idle timeout), API Gateway's two-hour cut, and
optionally a storm (every socket dropped at once). Each route runs the real rule
(rules.subscribe, heartbeat, disconnect, sweep) inside a metered Lambda
invocation; the sweeper runs every minute, fanned out as the deployed one is.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agent_channel import clock
from agent_channel.config import Settings
from agent_channel.identity.tokens import mint_lease_token
from agent_channel.presence import rules, sweep_plan
from agent_channel.presence.model import Subscription
from agent_channel.storage import schema
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
    sweep_workers: int = 16
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


@dataclass
class Outcome:
    scenario: Scenario
    meter: Meter
    unroute_seconds: list[float] = field(default_factory=list)
    storm_settle_seconds: float | None = None
    storm_sessions: int = 0
    sweep_longest_ms: float = 0.0
    errors: list[str] = field(default_factory=list)
    connected_at_end: int = 0
    storm_waiting_at_end: int = 0
    storm_elapsed: float = 0.0


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
def _simulated_time(errors: list[str]) -> Iterator[list[float]]:
    now = [EPOCH]
    patches = {
        (clock, "now"): lambda: now[0],
        (rules, "logger"): _Quiet(errors),
        (rules, "count"): lambda *args, **kwargs: None,
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
        self.settings = dataclasses.replace(
            Settings.from_env(),
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
            self._at(self.random.randrange(1, duration), "cut", index)
            self._at(self.random.randrange(1, self.scenario.heartbeat_seconds + 1), "beat", index)
            self._draw_departure(0, index)
        self.meter.reset()

    def _connect(self, second: int, index: int, admitted: list[int]) -> None:
        session = self.sessions[index]
        self.meter.add("connect_attempts")
        if admitted[0] >= self.scenario.new_connections_per_second:
            # 429 on the upgrade: the client backs off as after any failed attempt.
            session.failures += 1
            delay = self.backoff.delay(session.failures, throttled=True)
            self._at(second + max(1, round(delay)), "connect", index)
            return
        admitted[0] += 1
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
        session = self.sessions[index]
        meter = self.meter
        meter.add("messages")
        meter.begin("heartbeat")
        rules.heartbeat(self.store, self.scheduler, session.subscription)
        meter.end()
        self._at(second + self.scenario.heartbeat_seconds, "beat", index)

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
    def _sweep(self) -> None:
        groups = sweep_plan.shard_groups(self.scenario.sweep_workers)
        with self.meter.invocation("sweeper"):
            rules.pay_owed_graces(self.store, self.scheduler)
            for _ in groups:
                self.meter.call("lambda", "Invoke")
        for shards in groups:
            with self.meter.invocation("sweeper"):
                rules.sweep(self.store, self.scheduler, self.settings, shards)

    def _note_unrouted(self, second: int) -> None:
        for agent_id in self.store.cleared:
            crashed = self.crashed_at.pop(agent_id, None)
            if crashed is not None:
                self.outcome.unroute_seconds.append(second - crashed)
        self.store.cleared.clear()

    # -- the run -----------------------------------------------------------------------
    def _tick(self, second: int) -> None:
        self.meter.second = second
        clock_now[0] = EPOCH + second
        admitted = [0]
        due = self.events.pop(second, [])
        connects = []
        for kind, index, generation in due:
            if kind == "connect":
                connects.append(index)
            elif kind == "storm_disconnect":
                self._storm_disconnect(index)
            elif generation == self.sessions[index].generation:
                self._handle(second, kind, index)
        self.random.shuffle(connects)
        for index in connects:
            if self.sessions[index].connection_id is None:
                self._connect(second, index, admitted)
        if second % 60 == 0 and second > 0:
            self._sweep()
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

    def run(self) -> Outcome:
        global clock_now
        with _simulated_time(self.outcome.errors) as now:
            clock_now = now
            self._populate()
            storm = self.scenario.storm_at_minute
            for second in range(self.scenario.minutes * 60):
                if storm is not None and second == storm * 60 + 30:
                    self._storm(second)
                self._tick(second)
        self.outcome.sweep_longest_ms = self.meter.longest_ms.get("sweeper", 0.0)
        self.outcome.connected_at_end = self.connected
        self.outcome.storm_waiting_at_end = len(self.storm_waiting)
        if self.storm_started:
            self.outcome.storm_elapsed = self.scenario.minutes * 60 - self.storm_started
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
