"""Permission decisions: record one (first wins), push it, and replay it on demand.

A decision is stored under its agent (``DECISION#<agent_id>`` / ``REQ#<request_id>``),
so a replay can only ever address the requesting agent's own decisions: another
agent's ids do not name any item it could read. Decisions never expire, so one
recorded while the agent had no socket is still there for the next replay,
however long the outage.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import TransactWriteError

from agent_channel import clock
from agent_channel.broadcast import BroadcastResult, broadcast_to_stream
from agent_channel.connections import stream_connections
from agent_channel.dynamo_store import connection_key, transaction
from agent_channel.errors import Refusal
from agent_channel.models import ConnectionRecord, DecisionRecord, Record, UserRecord, user_pk
from agent_channel.observability import logger
from agent_channel.presence_types import agent_stream
from agent_channel.socket_events import TARGET_CHANNEL_AGENT, Caller

if TYPE_CHECKING:
    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient

MAX_REQUEST_ID_LENGTH = 256
"""Far below DynamoDB's 1 KB sort key; a plugin's request ids are short."""

MAX_CONFLICT_RETRIES = 3
CONDITION_FAILED = "ConditionalCheckFailed"
TRANSACTION_CONFLICT = "TransactionConflict"

BATCH_GET_LIMIT = 100
"""BatchGetItem reads at most 100 keys per request."""


class Behavior(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class DecisionError(Refusal):
    code = "decision_error"


class InvalidDecision(DecisionError):
    code = "invalid_decision"


class AlreadyDecided(DecisionError):
    code = "already_decided"


class NotOwner(DecisionError):
    code = "forbidden"


class ReplayRefused(DecisionError):
    code = "not_subscribed"


class BadReplayRequest(DecisionError):
    code = "invalid_request"


class TooManyIds(DecisionError):
    code = "too_many_request_ids"


def decision_key(agent_id: int, request_id: str) -> tuple[str, str]:
    return f"DECISION#{agent_id}", f"REQ#{request_id}"


def decision_message(record: DecisionRecord) -> dict[str, Any]:
    """What the agent's plugin receives, first time and on every replay."""
    return {
        "type": "permission_decision",
        "request_id": record.request_id,
        "behavior": record.behavior,
        "agent_id": int(record.agent_id),
    }


def _check_request_id(request_id: str) -> None:
    if not request_id.strip():
        raise InvalidDecision("request_id must not be blank")
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidDecision(f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters")


def record_decision(
    *, agent_id: int, request_id: str, behavior: str, decided_by: int
) -> DecisionRecord:
    """Store a decision, once. Raises NotOwner, AlreadyDecided or InvalidDecision."""
    try:
        chosen = Behavior(behavior)
    except ValueError:
        raise InvalidDecision("behavior must be 'allow' or 'deny'") from None
    _check_request_id(request_id)
    pk, sk = decision_key(agent_id, request_id)
    record = DecisionRecord(
        pk,
        sk,
        agent_id=agent_id,
        request_id=request_id,
        behavior=chosen.value,
        decided_at=clock.now(),
        decided_by=decided_by,
    )
    for _attempt in range(MAX_CONFLICT_RETRIES):
        try:
            with transaction() as writes:
                # Ownership is checked in the write itself, not by an earlier read:
                # an agent handed to another owner in between cannot get a stale yes.
                writes.condition_check(
                    UserRecord, user_pk(agent_id), "USER", UserRecord.created_by == decided_by
                )
                # Two humans (or two clicks) deciding at once: only the first commits.
                writes.save(record, condition=DecisionRecord.pk.does_not_exist())
        except TransactWriteError as error:
            codes = [reason.code if reason else None for reason in error.cancellation_reasons]
            if codes and codes[0] == CONDITION_FAILED:
                # Same answer whether the agent is missing or someone else's: one
                # user never learns anything about another's agents or decisions.
                raise NotOwner(f"agent {agent_id} is not yours to decide for") from error
            if len(codes) > 1 and codes[1] == CONDITION_FAILED:
                raise AlreadyDecided(f"request {request_id} is already decided") from error
            if TRANSACTION_CONFLICT in codes:
                # A concurrent decision of the same request is in flight: try again,
                # and its commit (if any) makes this one AlreadyDecided.
                continue
            raise
        return record
    raise AlreadyDecided(f"request {request_id} is being decided concurrently")


@dataclass(frozen=True)
class Decided:
    record: DecisionRecord
    broadcast: BroadcastResult


def decide(
    *,
    agent_id: int,
    request_id: str,
    behavior: str,
    decided_by: int,
    client: ApiGatewayManagementApiClient | None = None,
) -> Decided:
    """Record the decision (first wins), then push it to every session of the agent.

    With no socket open the push reaches nobody; the decision stays recorded and
    the plugin's next replay delivers it.
    """
    record = record_decision(
        agent_id=agent_id, request_id=request_id, behavior=behavior, decided_by=decided_by
    )
    stream = agent_stream(agent_id)
    try:
        result = broadcast_to_stream(stream, decision_message(record), client=client)
    except Exception:
        # The decision is recorded, which is what counts: the push is a courtesy
        # that the plugin's next replay makes good. Don't report a failure that
        # would make the backend decide again (and be told "already decided").
        logger.exception("could not push a recorded decision; replay will deliver it")
        result = BroadcastResult(stream)
    return Decided(record, result)


# Replay.


def normalize_request_ids(raw: Any, limit: int) -> list[str]:
    """Strings only, blanks dropped, duplicates removed, first order kept, at most
    ``limit``. Raises BadReplayRequest or TooManyIds; never anything else."""
    if not isinstance(raw, list):
        raise BadReplayRequest("request_ids must be a list of strings")
    seen: dict[str, None] = {}
    for item in raw:
        if not isinstance(item, str):
            raise BadReplayRequest("request_ids must contain only strings")
        if not item.strip() or item in seen:
            continue
        if len(item) > MAX_REQUEST_ID_LENGTH:
            raise BadReplayRequest(
                f"a request id is longer than {MAX_REQUEST_ID_LENGTH} characters"
            )
        seen[item] = None
    if len(seen) > limit:
        raise TooManyIds(f"at most {limit} request ids per replay, got {len(seen)}")
    return list(seen)


def parse_replay_body(body: str | None, limit: int) -> list[str]:
    """The ids of a ``{"action": "replay_permissions", "request_ids": [...]}`` frame."""
    try:
        message = json.loads(body or "")
    except ValueError:
        raise BadReplayRequest("the message is not JSON") from None
    if not isinstance(message, dict):
        raise BadReplayRequest("the message must be a JSON object")
    return normalize_request_ids(message.get("request_ids"), limit)


def _chunks(keys: Sequence[tuple[str, str]], size: int) -> Iterable[Sequence[tuple[str, str]]]:
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


def _may_replay(connection: Record | None, agent_id: int) -> bool:
    return (
        isinstance(connection, ConnectionRecord)
        and bool(connection.holds_lease)
        and connection.agent_id is not None
        and int(connection.agent_id) == agent_id
    )


def read_for_replay(
    connection_id: str, agent_id: int, request_ids: Sequence[str]
) -> list[DecisionRecord]:
    """The recorded decisions of ``agent_id`` among ``request_ids``, in that order.

    The caller's connection item is read in the same consistent BatchGetItem as
    the first decisions: a socket whose $disconnect already removed it (a replay
    frame racing the disconnect) is refused without a read of its own.
    """
    conn_key = connection_key(connection_id)
    keys = [decision_key(agent_id, request_id) for request_id in request_ids]
    found: dict[tuple[str, str], DecisionRecord] = {}
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
    return [found[key] for key in keys if key in found]


@dataclass(frozen=True)
class Replayed:
    requested: int
    sent: tuple[str, ...]
    broadcasts: tuple[BroadcastResult, ...]


def replay(
    connection_id: str,
    caller: Caller | None,
    request_ids: Sequence[str],
    *,
    client: ApiGatewayManagementApiClient | None = None,
) -> Replayed:
    """Re-broadcast the recorded decisions among ``request_ids`` to the agent's stream.

    Undecided ids are skipped. Idempotent: the plugin drops ids it no longer holds.
    """
    if caller is None or caller.target != TARGET_CHANNEL_AGENT or caller.agent_id is None:
        raise ReplayRefused("only a channel agent's connection may replay permissions")
    agent_id = caller.agent_id
    decisions = read_for_replay(connection_id, agent_id, request_ids)
    if not decisions:
        return Replayed(len(request_ids), (), ())
    stream = agent_stream(agent_id)
    # Read the stream's members once for all the decisions this replay sends.
    members = stream_connections(stream)
    results: list[BroadcastResult] = []
    for record in decisions:
        result = broadcast_to_stream(
            stream, decision_message(record), client=client, connection_ids=members
        )
        results.append(result)
        # A socket found gone has been removed; don't post to it again.
        gone = set(result.gone)
        members = [member for member in members if member not in gone]
    sent = tuple(record.request_id for record in decisions)
    logger.info("permissions replayed", extra={"requested": len(request_ids), "sent": len(sent)})
    return Replayed(len(request_ids), sent, tuple(results))
