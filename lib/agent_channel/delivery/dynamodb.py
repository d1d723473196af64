"""The decision store on DynamoDB.

A decision is stored under its agent (``decision_key(agent_id, request_id)``), so a
replay can only ever address the requesting agent's own decisions: another agent's
ids do not name any item it could read. Decisions never expire, so one recorded
while the agent had no socket is still there for the next replay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_channel.delivery.decision_store import (
    AlreadyDecided,
    Decision,
    NotOwner,
    ReplayRefused,
)
from agent_channel.storage import schema
from agent_channel.storage.records import ConnectionRecord, DecisionRecord, Record, UserRecord
from agent_channel.storage.transactions import Refused, commit

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from pynamodb.transactions import TransactWrite

BATCH_GET_LIMIT = 100
"""BatchGetItem reads at most 100 keys per request."""


def decision_from(record: DecisionRecord) -> Decision:
    return Decision(
        agent_id=int(record.agent_id),
        request_id=record.request_id,
        behavior=record.behavior,
        decided_at=float(record.decided_at),
        decided_by=int(record.decided_by),
        reason=record.reason,
    )


def _chunks(keys: Sequence[schema.Key], size: int) -> Iterable[Sequence[schema.Key]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


def _may_replay(connection: Record | None, agent_id: int) -> bool:
    return (
        isinstance(connection, ConnectionRecord)
        and bool(connection.holds_lease)
        and connection.agent_id is not None
        and int(connection.agent_id) == agent_id
    )


class DynamoDecisionStore:
    def record(self, decision: Decision) -> None:
        record = DecisionRecord(
            *schema.decision_key(decision.agent_id, decision.request_id),
            agent_id=decision.agent_id,
            request_id=decision.request_id,
            behavior=decision.behavior,
            decided_at=decision.decided_at,
            decided_by=decision.decided_by,
            reason=decision.reason,
        )

        def build(writes: TransactWrite) -> None:
            # Ownership is checked in the write itself, not by an earlier read: an
            # agent handed to another owner in between cannot get a stale yes.
            writes.condition_check(
                UserRecord,
                *schema.user_key(decision.agent_id),
                UserRecord.created_by == decision.decided_by,
            )
            # Two humans (or two clicks) deciding at once: only the first commits. A
            # concurrent decision still in flight is a transient conflict that
            # commit() retries, and its commit then makes this one AlreadyDecided.
            writes.save(record, condition=DecisionRecord.pk.does_not_exist())

        try:
            commit(build)
        except Refused as refused:
            if schema.user_key(decision.agent_id) in refused.keys:
                # Same answer whether the agent is missing or someone else's: one
                # user never learns anything about another's agents or decisions.
                raise NotOwner(f"agent {decision.agent_id} is not yours to decide for") from refused
            raise AlreadyDecided(f"request {decision.request_id} is already decided") from refused

    def read_for_replay(
        self, connection_id: str, agent_id: int, request_ids: Sequence[str]
    ) -> list[Decision]:
        # The caller's connection item is read in the same consistent BatchGetItem as
        # the first decisions: a socket whose $disconnect already removed it (a
        # replay frame racing the disconnect) is refused without a read of its own.
        conn_key = schema.connection_key(connection_id)
        keys = [schema.decision_key(agent_id, request_id) for request_id in request_ids]
        found: dict[schema.Key, DecisionRecord] = {}
        first, rest = keys[: BATCH_GET_LIMIT - 1], keys[BATCH_GET_LIMIT - 1 :]
        batches = [[conn_key, *first], *_chunks(rest, BATCH_GET_LIMIT)]
        for number, batch in enumerate(batches):
            records = {(r.pk, r.sk): r for r in Record.batch_get(batch, consistent_read=True)}
            if number == 0 and not _may_replay(records.get(conn_key), agent_id):
                raise ReplayRefused("only a subscribed channel agent may replay permissions")
            for key, record in records.items():
                # The key carries the agent: nothing but this agent's decisions can be here.
                if isinstance(record, DecisionRecord) and key != conn_key:
                    found[key] = record
        return [decision_from(found[key]) for key in keys if key in found]
