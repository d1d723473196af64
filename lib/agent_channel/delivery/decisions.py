"""Permission decisions: record one (first wins), push it, and replay it on demand.

Plain functions over a DecisionStore (``delivery.dynamodb`` keeps each decision
under its agent, so a replay can only ever address the requesting agent's own
decisions). Decisions never expire, so one recorded while the agent had no socket
is still there for the next replay, however long the outage.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, NamedTuple

from agent_channel import client_json, clock
from agent_channel.delivery.broadcast import broadcast_to_stream
from agent_channel.delivery.decision_store import (
    AlreadyDecided,
    Decision,
    DecisionError,
    DecisionStore,
    NotOwner,
    ReplayRefused,
)
from agent_channel.delivery.fanout import BroadcastResult, GoneHandler
from agent_channel.delivery.history import History, publish
from agent_channel.delivery.members import stream_connections
from agent_channel.delivery.streams import agent_stream
from agent_channel.identity.caller import Caller, Target
from agent_channel.observability import logger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent_channel.delivery.fanout import ConnectionPoster

__all__ = [
    "AlreadyDecided",
    "BadReplayRequest",
    "Behavior",
    "Decided",
    "DecisionError",
    "InvalidDecision",
    "NotOwner",
    "ReplayRefused",
    "Replayed",
    "TooManyIds",
    "decide",
    "decision_message",
    "normalize_request_ids",
    "parse_replay_body",
    "record_decision",
    "replay",
]

MAX_REQUEST_ID_LENGTH = 256
"""Far below DynamoDB's 1 KB sort key; a plugin's request ids are short."""

MAX_REASON_LENGTH = 2000
"""A sentence or a paragraph from the human; far below the 128 KB frame limit."""


class Behavior(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class InvalidDecision(DecisionError):
    code = "invalid_decision"


class BadReplayRequest(DecisionError):
    code = "invalid_request"


class TooManyIds(DecisionError):
    code = "too_many_request_ids"


def decision_message(record: Decision) -> dict[str, Any]:
    """What the agent's plugin receives, first time and on every replay.

    ``decided_by`` and ``reason`` are additions over the first protocol: a client
    that does not know them ignores them. ``reason`` is sent only when recorded.
    """
    message: dict[str, Any] = {
        "type": "permission_decision",
        "request_id": record.request_id,
        "behavior": record.behavior,
        "agent_id": record.agent_id,
        "decided_by": record.decided_by,
    }
    if record.reason:
        message["reason"] = record.reason
    return message


def _check_request_id(request_id: str) -> None:
    if not request_id.strip():
        raise InvalidDecision("request_id must not be blank")
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidDecision(f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters")


def _check_reason(reason: str | None) -> str | None:
    if reason is None or not reason.strip():
        # A blank reason says nothing: stored and sent as no reason at all.
        return None
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidDecision(f"reason is longer than {MAX_REASON_LENGTH} characters")
    return reason


def record_decision(
    store: DecisionStore,
    *,
    agent_id: int,
    request_id: str,
    behavior: str,
    decided_by: int,
    reason: str | None = None,
) -> Decision:
    """Store a decision, once. Raises NotOwner, AlreadyDecided or InvalidDecision."""
    try:
        chosen = Behavior(behavior)
    except ValueError:
        raise InvalidDecision("behavior must be 'allow' or 'deny'") from None
    _check_request_id(request_id)
    reason = _check_reason(reason)
    decision = Decision(
        agent_id=agent_id,
        request_id=request_id,
        behavior=chosen.value,
        decided_at=clock.now(),
        decided_by=decided_by,
        reason=reason,
    )
    store.record(decision)
    return decision


class Decided(NamedTuple):
    record: Decision
    broadcast: BroadcastResult


def decide(
    store: DecisionStore,
    *,
    agent_id: int,
    request_id: str,
    behavior: str,
    decided_by: int,
    client: ConnectionPoster,
    on_gone: GoneHandler | None,
    reason: str | None = None,
    history: History | None = None,
) -> Decided:
    """Record the decision (first wins), then push it to every session of the agent,
    numbered in the agent stream's ``history`` when one is given.

    With no socket open the push reaches nobody; the decision stays recorded and
    the plugin's next resume (or replay) delivers it.
    """
    record = record_decision(
        store,
        agent_id=agent_id,
        request_id=request_id,
        behavior=behavior,
        decided_by=decided_by,
        reason=reason,
    )
    stream = agent_stream(agent_id)
    try:
        if history is not None:
            result = publish(
                history, agent_id, decision_message(record), client=client, on_gone=on_gone
            ).result
        else:
            result = broadcast_to_stream(
                stream, decision_message(record), client=client, on_gone=on_gone
            )
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
        message = client_json.loads(body or "")
    except ValueError:
        raise BadReplayRequest("the message is not JSON") from None
    if not isinstance(message, dict):
        raise BadReplayRequest("the message must be a JSON object")
    return normalize_request_ids(message.get("request_ids"), limit)


class Replayed(NamedTuple):
    requested: int
    sent: tuple[str, ...]
    broadcasts: tuple[BroadcastResult, ...]


def replay(
    store: DecisionStore,
    connection_id: str,
    caller: Caller | None,
    request_ids: Sequence[str],
    *,
    client: ConnectionPoster,
    on_gone: GoneHandler | None,
) -> Replayed:
    """Re-broadcast the recorded decisions among ``request_ids`` to the agent's stream.

    Undecided ids are skipped. Idempotent: the plugin drops ids it no longer holds.
    """
    if caller is None or caller.target is not Target.CHANNEL_AGENT or caller.agent_id is None:
        raise ReplayRefused("only a channel agent's connection may replay permissions")
    agent_id = caller.agent_id
    decisions = store.read_for_replay(connection_id, agent_id, request_ids)
    if not decisions:
        return Replayed(len(request_ids), (), ())
    stream = agent_stream(agent_id)
    # Read the stream's members once for all the decisions this replay sends.
    members = stream_connections(stream)
    results: list[BroadcastResult] = []
    for record in decisions:
        result = broadcast_to_stream(
            stream,
            decision_message(record),
            client=client,
            on_gone=on_gone,
            connection_ids=members,
        )
        results.append(result)
        # A socket found gone has been removed; don't post to it again.
        gone = set(result.gone)
        members = [member for member in members if member not in gone]
    sent = tuple(record.request_id for record in decisions)
    logger.info("permissions replayed", extra={"requested": len(request_ids), "sent": len(sent)})
    return Replayed(len(request_ids), sent, tuple(results))
