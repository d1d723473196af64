"""Who is on a stream, and what a connection was: the reads delivery needs.

Fan-out reads a stream's members with one consistent Query of its partition,
never a Scan and never an index: a connection that has just subscribed must
receive the very next message.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from agent_channel.storage import schema
from agent_channel.storage.records import ConnectionRecord, Record


class OpenConnection(NamedTuple):
    """A connection as ``$connect`` recorded it."""

    connection_id: str
    user_id: int
    stream: str
    agent_id: int | None
    holds_lease: bool
    connected_at: float = 0.0


def stream_connections(stream: str, *, page_size: int | None = None) -> list[str]:
    """Every connection id on ``stream`` (all pages), read consistently.

    Only the sort key is projected (it is the member prefix and the connection id):
    a large stream costs a fraction of the bytes, and no record is built per member.
    """
    table = Record._get_connection()
    prefix = schema.MEMBER_PREFIX
    found: list[str] = []
    start: dict[str, Any] | None = None
    while True:
        page = table.query(
            schema.stream_partition(stream),
            range_key_condition=Record.sk.startswith(prefix),
            consistent_read=True,
            attributes_to_get=["sk"],
            exclusive_start_key=start,
            limit=page_size,
        )
        found.extend(item["sk"]["S"][len(prefix) :] for item in page.get("Items", []))
        start = page.get("LastEvaluatedKey")
        if not start:
            return found


def get_connection(connection_id: str) -> OpenConnection | None:
    try:
        record = ConnectionRecord.get(*schema.connection_key(connection_id), consistent_read=True)
    except ConnectionRecord.DoesNotExist:
        return None
    return OpenConnection(
        connection_id=record.connection_id,
        user_id=int(record.user_id),
        stream=record.stream,
        agent_id=None if record.agent_id is None else int(record.agent_id),
        holds_lease=bool(record.holds_lease),
        connected_at=float(record.connected_at or 0),
    )
