"""What to do when ``@connections`` answers 410 Gone: run the ``$disconnect`` path.

API Gateway's ``$disconnect`` may be late or never come, so a socket found closed
by a post is removed at once, exactly as its ``$disconnect`` would remove it.

Posting never destroys state it cannot prove dead. ``$connect`` writes the stream
membership (and a channel agent's lease) before API Gateway completes the
handshake, and API Gateway answers 410 to a post made before ``$connect``
returns. So a 410 for a connection younger than the connect window (longer than
API Gateway's 29 s integration timeout) proves nothing: the connection is left
alone. If it really died, its own ``$disconnect`` removes it, and if that never
comes either, its lease goes stale and the sweeper reaps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_channel import clock
from agent_channel.delivery.members import get_connection
from agent_channel.observability import count, logger
from agent_channel.presence.rules import Settled, disconnect

if TYPE_CHECKING:
    from agent_channel.config import Settings
    from agent_channel.delivery.fanout import GoneHandler
    from agent_channel.delivery.members import OpenConnection
    from agent_channel.grace.scheduler import GraceScheduler
    from agent_channel.presence.store import PresenceStore


def forget_gone(
    store: PresenceStore,
    scheduler: GraceScheduler,
    settings: Settings,
    connection_id: str,
    stream: str,
) -> Settled:
    """Remove a connection that answered 410 as its $disconnect would.

    The connection item says which stream it joined and whether it held a lease.
    If it is already gone (its $disconnect won the race), only a membership left
    behind on ``stream`` can remain; dropping it is idempotent. Running the
    presence path twice for one connection is safe by design: the second finds
    the lease gone and changes nothing (a stale or duplicate disconnect).
    """
    record = get_connection(connection_id)
    if record is None:
        store.drop_connection(connection_id, stream)
        return Settled.NOTHING
    if may_be_in_handshake(record, settings):
        # Race: a post landing between the connect transaction (membership and
        # lease visible) and API Gateway completing the handshake answers 410 for a
        # socket about to open; removing it would leave an open, heartbeating
        # socket with no lease, no membership and (alone) no routing.
        count("GoneInHandshake")
        logger.info("410 within the connect window ignored", extra={"gone": connection_id})
        return Settled.NOTHING
    outcome = disconnect(
        store,
        scheduler,
        settings,
        connection_id=connection_id,
        stream=record.stream,
        agent_id=record.agent_id,
        holds_lease=record.holds_lease,
    )
    if record.stream != stream:
        # Not expected (a connection joins one stream), but a membership must not
        # outlive its connection whatever the data says.
        store.drop_connection(connection_id, stream)
    logger.info("gone connection removed", extra={"gone": connection_id, "outcome": outcome.value})
    return outcome


def may_be_in_handshake(record: OpenConnection, settings: Settings) -> bool:
    """True while ``$connect`` may not have returned yet: a 410 then proves nothing."""
    return clock.now() - record.connected_at < settings.connect_window_seconds


def gone_handler(
    store: PresenceStore, scheduler: GraceScheduler, settings: Settings
) -> GoneHandler:
    """``forget_gone`` bound to a process's stores, as fan-out calls it."""

    def on_gone(connection_id: str, stream: str) -> Settled:
        return forget_gone(store, scheduler, settings, connection_id, stream)

    return on_gone
