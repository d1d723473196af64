"""Connection lookups for delivery: who is on a stream, and what a connection was.

Fan-out reads a stream's members with one consistent Query of its partition
(``STREAM#<stream>``), never a Scan and never an index: a connection that has
just subscribed must receive the very next message.
"""

from __future__ import annotations

from typing import Any

from agent_channel import runtime
from agent_channel.config import settings
from agent_channel.dynamo_store import connection_key
from agent_channel.models import ConnectionRecord, Record
from agent_channel.observability import logger
from agent_channel.presence import Settled, disconnect


def stream_pk(stream: str) -> str:
    return f"STREAM#{stream}"


MEMBER_PREFIX = "CONN#"


def stream_connections(stream: str, *, page_size: int | None = None) -> list[str]:
    """Every connection id on ``stream`` (all pages), read consistently.

    Only the sort key is projected (it is ``CONN#<connection_id>``): a large
    stream costs a fraction of the bytes, and no model is built per member.
    """
    table = Record._get_connection()
    found: list[str] = []
    start: dict[str, Any] | None = None
    while True:
        page = table.query(
            stream_pk(stream),
            range_key_condition=Record.sk.startswith(MEMBER_PREFIX),
            consistent_read=True,
            attributes_to_get=["sk"],
            exclusive_start_key=start,
            limit=page_size,
        )
        found.extend(item["sk"]["S"][len(MEMBER_PREFIX) :] for item in page.get("Items", []))
        start = page.get("LastEvaluatedKey")
        if not start:
            return found


def get_connection(connection_id: str) -> ConnectionRecord | None:
    pk, sk = connection_key(connection_id)
    try:
        return ConnectionRecord.get(pk, sk, consistent_read=True)
    except ConnectionRecord.DoesNotExist:
        return None


def forget_gone(connection_id: str, stream: str) -> Settled:
    """API Gateway answered 410 for this connection: its socket is closed, and its
    $disconnect may be late or never come. Run the same path $disconnect runs.

    The connection item says which stream it joined and whether it held a lease.
    If it is already gone (its $disconnect won the race), only a membership left
    behind on ``stream`` can remain; dropping it is idempotent. Running the
    presence path twice for one connection is safe by design: the second finds
    the lease gone and changes nothing (a stale or duplicate disconnect).
    """
    record = get_connection(connection_id)
    store = runtime.presence_store()
    if record is None:
        store.drop_connection(connection_id, stream)
        return Settled.NOTHING
    outcome = disconnect(
        store,
        runtime.grace_scheduler(),
        settings(),
        connection_id=connection_id,
        stream=record.stream,
        agent_id=None if record.agent_id is None else int(record.agent_id),
        holds_lease=bool(record.holds_lease),
    )
    if record.stream != stream:
        # Not expected (a connection joins one stream), but a membership must not
        # outlive its connection whatever the data says.
        store.drop_connection(connection_id, stream)
    logger.info("gone connection removed", extra={"gone": connection_id, "outcome": outcome.value})
    return outcome
