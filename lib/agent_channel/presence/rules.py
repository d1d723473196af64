"""The presence rules: subscribe, heartbeat, disconnect, reap, last one out, sweep.

Plain functions over a PresenceStore and a GraceScheduler. No AWS detail here;
the storage conditions that make these rules race-free live in the store.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NamedTuple

from agent_channel import clock
from agent_channel.grace.scheduler import GraceCancellation, GraceScheduler
from agent_channel.identity.tokens import mint_lease_token
from agent_channel.observability import count, logger
from agent_channel.presence.store import MAX_STALE_PER_CLEAR, PresenceStore
from agent_channel.presence.sweep_plan import Resume, every_shard

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from agent_channel.config import Settings
    from agent_channel.presence.model import Lease, Presence, Subscription

MAX_SETTLE_ATTEMPTS = 5
"""Retries of the read-decide-write loop before leaving the rest to the sweeper."""


class Heartbeat(enum.StrEnum):
    REFRESHED = "refreshed"
    RESTORED = "restored"
    GONE = "gone"


class Settled(enum.StrEnum):
    NOTHING = "nothing"
    STALE_DISCONNECT = "stale_disconnect"
    SIBLING_REMAINS = "sibling_remains"
    LAST_OUT = "last_out"
    CONFLICT = "conflict"


def subscribe(
    store: PresenceStore,
    scheduler: GraceScheduler,
    subscription: Subscription,
    *,
    grace_scheduled: bool = True,
) -> str:
    """Attach a channel agent's socket, mint its lease and turn routing on.

    The agent-wide grace is withdrawn only when one may be pending
    (``grace_scheduled``, recorded on the agent by the last-one-out clear and read
    by the authorizer). A session-scoped grace is not withdrawn here: it is
    scheduled while siblings stay, without a write to the agent to record it, and
    cancel_offline's recheck finds the returning session and cancels nothing.
    """
    token = mint_lease_token()
    store.subscribe(subscription, token, clock.now())
    if grace_scheduled:
        try:
            scheduler.withdraw(subscription.agent_id, None)
        except Exception:
            logger.warning("could not withdraw a pending grace schedule", exc_info=True)
    return token


def reap_on_subscribe(
    store: PresenceStore,
    scheduler: GraceScheduler,
    settings: Settings,
    subscription: Subscription,
) -> list[Lease]:
    """After a subscribe that found the agent routed (other sessions hold leases):
    reap the stale ones, so a crashed process's row cannot pass for a session, and
    schedule the session-scoped grace of each session left without a live lease, as
    settle does. Best effort: the subscribe has committed whatever happens here, and
    the sweeper reaps what this leaves.

    Each delete is conditioned on the lease still being stale, so a sibling whose
    heartbeat lands between this read and the delete keeps its lease.
    """
    try:
        now = clock.now()
        cutoff = now - settings.stale_after_seconds
        presence = store.read(subscription.agent_id)
        stale = presence.stale_leases(cutoff) if presence is not None else []
        if presence is None or not stale:
            return []
        reaped = store.reap(stale, cutoff)
        live = presence.live_leases(cutoff)
        _schedule_sessions(store, scheduler, settings, presence, live, None, reaped, now)
    except Exception:
        logger.warning("could not reap stale leases on subscribe", exc_info=True)
        return []
    if reaped:
        logger.info("stale leases reaped on subscribe", extra={"reaped": len(reaped)})
    return reaped


def _withdraw_pending_grace(scheduler: GraceScheduler, subscription: Subscription) -> None:
    # A courtesy only: cancel_offline rechecks presence before acting, so a schedule
    # left behind here is harmless.
    try:
        scheduler.withdraw(subscription.agent_id, subscription.session_id or None)
    except Exception:
        logger.warning("could not withdraw a pending grace schedule", exc_info=True)


def heartbeat(
    store: PresenceStore, scheduler: GraceScheduler, subscription: Subscription
) -> Heartbeat:
    """Refresh the lease; restore it (and routing) if it was reaped while the socket
    stayed open, exactly as a subscribe would; never bring back a connection that
    $disconnect removed."""
    now = clock.now()
    if store.touch(subscription.agent_id, subscription.connection_id, now):
        return Heartbeat.REFRESHED
    if store.restore(subscription, mint_lease_token(), now):
        logger.info("lease restored by heartbeat")
        _withdraw_pending_grace(scheduler, subscription)
        return Heartbeat.RESTORED
    return Heartbeat.GONE


def disconnect(
    store: PresenceStore,
    scheduler: GraceScheduler,
    settings: Settings,
    *,
    connection_id: str,
    stream: str,
    agent_id: int | None,
    holds_lease: bool,
) -> Settled:
    """$disconnect, idempotent: it may come late, twice, or never."""
    store.drop_connection(connection_id, stream)
    if not holds_lease or agent_id is None:
        return Settled.NOTHING
    dropped = store.drop_lease(agent_id, connection_id)
    if dropped is None:
        # A stale or duplicate disconnect: a reap or an earlier delivery of this
        # event already took the lease, and whoever did so settled presence.
        logger.info("lease already gone; stale or duplicate disconnect")
        return Settled.STALE_DISCONNECT
    return settle(store, scheduler, settings, agent_id, dropped=dropped)


class Swept(NamedTuple):
    """What a sweep settled, and where it stopped if its budget ran out first:
    ``rest`` the shards it did not finish, in order (empty: it finished), and
    ``resume`` the point reached inside the first of them, if it had begun it."""

    outcomes: dict[str, int]
    rest: tuple[int, ...] = ()
    resume: Resume | None = None


def sweep(
    store: PresenceStore,
    scheduler: GraceScheduler,
    settings: Settings,
    shards: Sequence[int] | None = None,
    *,
    resume: Resume | None = None,
    budget: Callable[[], float] | None = None,
) -> Swept:
    """Settle every routed agent (of the given index shards, in their order, or of
    all): an agent whose plugins all crashed without a $disconnect becomes
    unroutable within STALE_AFTER plus one sweep. A sweep of all shards also pays
    owed graces; a shard worker leaves that to the sweep that fanned it out.

    ``resume`` skips the agents of its shard up to and including ``resume.after``
    (a continuation's starting point). ``budget`` gives the seconds left to start
    new work in: once it is at or below zero the sweep starts no further settle
    and returns where it stopped. At least one agent is settled first, so a chain
    of continuations always moves on.
    """
    outcomes: dict[str, int] = {}
    if shards is None:
        pay_owed_graces(store, scheduler)
    order = every_shard() if shards is None else list(shards)
    settled_any = False
    for position, shard in enumerate(order):
        after = resume.after if resume is not None and resume.shard == shard else None
        if settled_any and _spent(budget):
            return _stopped(outcomes, order[position:], shard, after)
        # Race: a continuation may still be sweeping these agents when the next
        # minute's sweep (or the continuation of an earlier one) reaches them too.
        # Harmless: settle decides on a consistent read and writes only under the
        # presence version and staleness conditions, so the second settle of an
        # agent finds nothing to do or fails its condition and reads again.
        for agent_id in store.routed_in_shard(shard, after):
            if settled_any and _spent(budget):
                return _stopped(outcomes, order[position:], shard, after)
            try:
                outcome = settle(store, scheduler, settings, agent_id, dropped=None)
            except Exception:
                logger.exception("sweep of agent failed", extra={"agent_id": agent_id})
                outcome = Settled.CONFLICT
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            settled_any = True
            after = agent_id
    return Swept(outcomes)


def _spent(budget: Callable[[], float] | None) -> bool:
    return budget is not None and budget() <= 0


def _stopped(outcomes: dict[str, int], rest: list[int], shard: int, after: int | None) -> Swept:
    return Swept(outcomes, tuple(rest), None if after is None else Resume(shard, after))


MAX_OWED_GRACES_PER_SWEEP = 400
"""Owed graces one sweep pays (about 10 s of CreateSchedule calls): after a storm
that outran Scheduler's quota the debt can be large, and the invocation paying it
must stay far from its timeout; the rest waits a minute (docs/SCALE.md)."""


def pay_owed_graces(store: PresenceStore, scheduler: GraceScheduler) -> None:
    for cancellation, due_at in store.owed_graces()[:MAX_OWED_GRACES_PER_SWEEP]:
        _pay_owed_grace(store, scheduler, cancellation, due_at)


def _pay_owed_grace(
    store: PresenceStore, scheduler: GraceScheduler, cancellation: GraceCancellation, due_at: float
) -> None:
    try:
        scheduler.schedule(cancellation, max(due_at, clock.now()))
    except Exception:
        logger.warning("owed grace still cannot be scheduled", exc_info=True)
        return
    count("GraceRescheduled")
    store.settle_owed_grace(cancellation)


def settle(
    store: PresenceStore,
    scheduler: GraceScheduler,
    settings: Settings,
    agent_id: int,
    *,
    dropped: Lease | None,
) -> Settled:
    """Steps 2-5 of $disconnect: reap stale leases; keep routing while a live lease
    remains; otherwise the last one out clears routing and schedules the grace.

    Race-free without locks: the clear is conditioned on the presence version read
    here (a subscribe since then wins) and on each stale lease still being stale (a
    heartbeat since then wins); on conflict the loop starts again from the read.
    """
    for attempt in range(MAX_SETTLE_ATTEMPTS):
        if attempt:
            count("PresenceRetries")
        now = clock.now()
        cutoff = now - settings.stale_after_seconds
        presence = store.read(agent_id)
        if presence is None:
            return Settled.NOTHING
        stale = presence.stale_leases(cutoff)
        live = presence.live_leases(cutoff)
        if live:
            # One reaper per stale lease: beside a live sibling only the sweeper
            # reaps (dropped is None). Concurrent $disconnects of siblings would
            # otherwise all race to delete the same stale rows, each failed delete
            # billed; routing stays on either way, so the reap can wait a sweep.
            reaped = store.reap(stale, cutoff) if stale and dropped is None else []
            _schedule_sessions(store, scheduler, settings, presence, live, dropped, reaped, now)
            return Settled.SIBLING_REMAINS
        if dropped is None and not presence.routing_on:
            if stale:
                store.reap(stale, cutoff)
            return Settled.NOTHING
        if len(stale) > MAX_STALE_PER_CLEAR:
            store.reap(stale[MAX_STALE_PER_CLEAR:], cutoff)
            continue
        if store.clear_routing(presence, stale, cutoff):
            token = dropped.token if dropped else (presence.subscription_token or "")
            _schedule(store, scheduler, settings, GraceCancellation(agent_id, token), now)
            logger.info("last one out: routing cleared", extra={"reaped": len(stale)})
            return Settled.LAST_OUT
    count("PresenceConflicts")
    logger.warning("presence kept changing; leaving it to the sweeper")
    return Settled.CONFLICT


def _schedule_sessions(
    store: PresenceStore,
    scheduler: GraceScheduler,
    settings: Settings,
    presence: Presence,
    live: list[Lease],
    dropped: Lease | None,
    reaped: list[Lease],
    now: float,
) -> None:
    """Session-scoped grace for sessions that left while siblings stay: a session's
    own topic is private to it, and no sibling will reply there."""
    sessions: dict[str, str] = {}
    live_sessions = {lease.session_id for lease in live}
    for lease in reaped:
        if lease.session_id and lease.session_id not in live_sessions:
            sessions[lease.session_id] = lease.token
    if dropped is not None and dropped.session_id:
        sessions[dropped.session_id] = dropped.token
    for session_id, token in sessions.items():
        cancellation = GraceCancellation(presence.agent_id, token, session_id)
        _schedule(store, scheduler, settings, cancellation, now)


def _schedule(
    store: PresenceStore,
    scheduler: GraceScheduler,
    settings: Settings,
    cancellation: GraceCancellation,
    now: float,
) -> None:
    due_at = now + settings.grace_seconds
    try:
        scheduler.schedule(cancellation, due_at)
    except Exception:
        # Routing is already settled and stays so. The agent-wide grace is owed:
        # recorded on the agent so the sweeper schedules it once Scheduler answers.
        # A session-scoped grace is not recorded; the agent-wide one, when its
        # last session leaves, covers that session's work too.
        count("GraceScheduleFailures")
        logger.exception("could not schedule a grace cancellation")
        if cancellation.session_id is None:
            try:
                store.owe_grace(cancellation, due_at)
            except Exception:
                logger.exception("could not record the owed grace either")
