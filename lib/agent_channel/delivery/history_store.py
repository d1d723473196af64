"""An agent stream's durable history on DynamoDB: one item per message, numbered.

A message's sequence number is allocated by the write that keeps it: read the
newest entry (one consistent Query, newest first, one item), then put entry
``newest + 1`` on condition that it does not exist yet. Two writers that read the
same newest entry cannot both commit the same number: the loser reads again and
takes the next one. So numbers are dense per agent (no gaps), which lets a client
tell a missed message from one that was never sent.

The epoch names one numbering of the stream. History expires (TTL), and once every
entry is gone the numbering starts again at 1 under a new epoch, so a client that
remembers ``(epoch, seq)`` of an old numbering is told apart from one that is up
to date.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pynamodb.exceptions import PutError

from agent_channel.storage import schema
from agent_channel.storage.records import HistoryRecord, Record
from agent_channel.storage.transactions import condition_failed

MAX_APPEND_ATTEMPTS = 8
"""Concurrent writers to one agent stream, each retry after losing a number."""


class HistoryUnavailable(Exception):
    """A sequence number could not be allocated (too many concurrent writers)."""


class Entry(NamedTuple):
    """One message of an agent stream as it was sent: ``body`` carries seq and epoch."""

    agent_id: int
    seq: int
    epoch: str
    body: dict[str, Any]


def new_epoch() -> str:
    return secrets.token_hex(4)


def _entry(record: HistoryRecord) -> Entry:
    return Entry(
        agent_id=int(record.agent_id),
        seq=int(record.seq),
        epoch=record.epoch,
        body=json.loads(record.body),
    )


def _entries(agent_id: int, **query: Any) -> list[Entry]:
    return [
        _entry(record)
        for record in Record.query(
            schema.history_partition(agent_id), consistent_read=True, **query
        )
        if isinstance(record, HistoryRecord)
    ]


class DynamoHistory:
    def head(self, agent_id: int) -> Entry | None:
        """The newest entry of the agent's stream, or None if it has none."""
        newest = _entries(
            agent_id,
            range_key_condition=Record.sk.startswith(schema.HISTORY_PREFIX),
            scan_index_forward=False,
            limit=1,
        )
        return newest[0] if newest else None

    def since(self, agent_id: int, first_seq: int, limit: int) -> list[Entry]:
        """Entries from ``first_seq`` on, oldest first, at most ``limit`` (one Query:
        ``limit`` is kept well under a 1 MB page)."""
        return _entries(
            agent_id,
            range_key_condition=Record.sk.between(
                schema.history_sort(first_seq), schema.history_sort(10**20 - 1)
            ),
            limit=limit,
        )

    def append(
        self, agent_id: int, message: dict[str, Any], now: float, retention_seconds: int
    ) -> Entry:
        """Number ``message`` and keep it; the entry, whose body carries seq and epoch."""
        for _attempt in range(MAX_APPEND_ATTEMPTS):
            newest = self.head(agent_id)
            seq, epoch = (newest.seq + 1, newest.epoch) if newest else (1, new_epoch())
            body = {**message, "seq": seq, "epoch": epoch}
            record = HistoryRecord(
                *schema.history_key(agent_id, seq),
                agent_id=agent_id,
                seq=seq,
                epoch=epoch,
                body=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
                created_at=now,
                expires_at=datetime.fromtimestamp(now + retention_seconds, tz=UTC),
            )
            try:
                # Race: two writers read the same newest entry; only one may keep
                # the number, the other reads again and takes the next.
                record.save(condition=HistoryRecord.pk.does_not_exist())
            except PutError as error:
                if condition_failed(error):
                    continue
                raise
            return Entry(agent_id, seq, epoch, body)
        raise HistoryUnavailable(f"no sequence number for agent {agent_id} after retries")
