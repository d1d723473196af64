"""The reliable agent stream: every message to an agent's stream (a dispatch, a
permission decision) is numbered and kept, so a session that missed some can
``resume`` from the last sequence it saw, or ``resync`` from state when the
history no longer covers what it missed.

Durable in DynamoDB (``delivery.history_store``): any function instance can serve
any resume; nothing depends on one process's memory.

- publish: number the message (one Query + one conditional Put), then fan it out.
- resume ``{after, epoch}``: one consistent Query from ``after`` on. The entry
  ``after`` itself must still be there, of the same epoch: that proves nothing
  between it and the first entry returned was lost. Then the missed messages go
  to the resuming connection alone, in order, and ``resumed`` ends the answer.
  Otherwise ``history_gap``: the client resyncs.
- resync: the newest entry (the offset to go on from) and the agent's delegated
  tasks, each sent as its dispatch; ``resynced`` ends the answer.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from agent_channel import clock
from agent_channel.config import settings
from agent_channel.delivery.broadcast import broadcast_to_stream
from agent_channel.delivery.fanout import (
    DEFAULT_RETRY,
    BroadcastResult,
    GoneHandler,
    RetryPolicy,
    encode_checked,
    send_to_connection,
)
from agent_channel.delivery.streams import agent_stream
from agent_channel.errors import Refusal
from agent_channel.identity.caller import Caller, Target
from agent_channel.observability import count, logger
from agent_channel.tasks.model import Status

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent_channel.delivery.fanout import ConnectionPoster
    from agent_channel.delivery.history_store import Entry
    from agent_channel.tasks.store import TaskStore

MAX_RESUME_MESSAGES = 100
"""A session further behind than this resyncs instead: state is then cheaper than
history, and one Query page stays far below DynamoDB's 1 MB."""

MAX_SEQ = 10**18
MAX_EPOCH_LENGTH = 32


class History(Protocol):
    def head(self, agent_id: int) -> Entry | None: ...

    def since(self, agent_id: int, first_seq: int, limit: int) -> list[Entry]: ...

    def append(
        self, agent_id: int, message: dict[str, Any], now: float, retention_seconds: int
    ) -> Entry: ...


class StreamError(Refusal):
    code = "invalid_request"


class NotSubscribed(StreamError):
    code = "not_subscribed"


class UnknownSequence(StreamError):
    code = "unknown_sequence"


# ---------------------------------------------------------------- publish


class Published(NamedTuple):
    message: dict[str, Any]
    """As sent: with ``seq`` and ``epoch`` when it was kept."""
    result: BroadcastResult


def stamp(history: History, agent_id: int, message: dict[str, Any]) -> dict[str, Any]:
    """Number and keep ``message``; the message as it must be sent.

    If the history cannot be written the message still goes out, unnumbered: the
    live session gets it now, and a dispatch is redelivered until
    acknowledged (a decision by the plugin's replay). Refusing to send would lose
    more than it saves.
    """
    encode_checked({**message, "seq": MAX_SEQ, "epoch": "x" * MAX_EPOCH_LENGTH})
    try:
        entry = history.append(agent_id, message, clock.now(), settings().history_retention_seconds)
    except Exception:
        count("HistoryWriteFailures")
        logger.exception("could not keep a message in the agent stream's history")
        return message
    return entry.body


def publish(
    history: History,
    agent_id: int,
    message: dict[str, Any],
    *,
    client: ConnectionPoster,
    on_gone: GoneHandler | None,
    connection_ids: Sequence[str] | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> Published:
    """Number and keep ``message``, then send it to every session of the agent."""
    sent = stamp(history, agent_id, message)
    result = broadcast_to_stream(
        agent_stream(agent_id),
        sent,
        client=client,
        on_gone=on_gone,
        connection_ids=connection_ids,
        retry=retry,
    )
    return Published(sent, result)


# ---------------------------------------------------------------- requests


class ResumeRequest(NamedTuple):
    after: int
    epoch: str | None


def parse_object(body: str | None) -> dict[str, Any]:
    try:
        message = json.loads(body or "")
    except ValueError:
        raise StreamError("the message is not JSON") from None
    if not isinstance(message, dict):
        raise StreamError("the message must be a JSON object")
    return message


def _natural(value: Any, name: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < MAX_SEQ:
        least = "a non-negative" if allow_zero else "a positive"
        raise StreamError(f"'{name}' must be {least} integer")
    return value


def parse_resume(body: str | None) -> ResumeRequest:
    """``{"action": "resume", "after": N, "epoch": E}``; ``after`` 0 (and no epoch)
    for a client that has seen nothing of the stream yet."""
    message = parse_object(body)
    after = _natural(message.get("after"), "after", allow_zero=True)
    epoch = message.get("epoch")
    if epoch is not None and (
        not isinstance(epoch, str) or not epoch or len(epoch) > MAX_EPOCH_LENGTH
    ):
        raise StreamError(f"'epoch' must be a string of 1 to {MAX_EPOCH_LENGTH} characters")
    if after and epoch is None:
        raise StreamError("'epoch' is required with a non-zero 'after'")
    return ResumeRequest(after, epoch)


def parse_resync(body: str | None) -> None:
    parse_object(body)


def channel_agent(caller: Caller | None) -> int:
    """The agent of a channel agent's connection; NotSubscribed for any other."""
    if caller is None or caller.target is not Target.CHANNEL_AGENT or caller.agent_id is None:
        raise NotSubscribed("only a channel agent's connection may do this")
    return caller.agent_id


# ---------------------------------------------------------------- resume


class Resumed(NamedTuple):
    missed: tuple[Entry, ...]
    gap: bool
    seq: int
    epoch: str | None


def plan_resume(history: History, agent_id: int, request: ResumeRequest) -> Resumed:
    """What a session that saw up to ``request.after`` missed, or a gap."""
    after, epoch = request.after, request.epoch
    first = max(after, 1)
    # The entry ``after`` itself is read too (it proves continuity), and one more
    # than the bound tells "too far behind" apart.
    entries = history.since(agent_id, first, MAX_RESUME_MESSAGES + 2)
    if after:
        if not entries or entries[0].seq != after or entries[0].epoch != epoch:
            return _gap_or_unknown(history, agent_id, request)
        epoch = entries[0].epoch
        missed = entries[1:]
    else:
        if entries and entries[0].seq != 1:
            return Resumed((), True, after, epoch)
        missed = entries
        epoch = entries[0].epoch if entries else None
    expected = after + 1
    for entry in missed:
        if entry.seq != expected or entry.epoch != epoch:
            return Resumed((), True, after, request.epoch)
        expected += 1
    if len(missed) > MAX_RESUME_MESSAGES:
        return Resumed((), True, after, request.epoch)
    last = missed[-1].seq if missed else after
    return Resumed(tuple(missed), False, last, epoch)


def _gap_or_unknown(history: History, agent_id: int, request: ResumeRequest) -> Resumed:
    # Only on this rare path: a second read, to tell a sequence that was never
    # sent (a client bug) from history that expired or was renumbered.
    head = history.head(agent_id)
    if head is not None and head.epoch == request.epoch and head.seq < request.after:
        raise UnknownSequence(
            f"sequence {request.after} was never sent on this stream (newest is {head.seq})"
        )
    return Resumed((), True, request.after, request.epoch)


def resume(
    history: History,
    connection_id: str,
    caller: Caller | None,
    request: ResumeRequest,
    *,
    client: ConnectionPoster,
) -> Resumed:
    """Send the resuming connection what it missed, in order, then ``resumed``; or
    ``history_gap``. Raises NotSubscribed or UnknownSequence (nothing sent)."""
    agent_id = channel_agent(caller)
    planned = plan_resume(history, agent_id, request)
    if planned.gap:
        count("HistoryGaps")
        send_to_connection(
            connection_id,
            {"type": "history_gap", "after": request.after, "epoch": request.epoch},
            client=client,
        )
        return planned
    for entry in planned.missed:
        if not send_to_connection(connection_id, entry.body, client=client):
            # The socket is going: the rest waits for its next resume.
            break
    else:
        send_to_connection(
            connection_id,
            {
                "type": "resumed",
                "after": request.after,
                "seq": planned.seq,
                "epoch": planned.epoch,
                "sent": len(planned.missed),
            },
            client=client,
        )
    if planned.missed:
        count("ResumedMessages", len(planned.missed))
    return planned


# ---------------------------------------------------------------- resync


class Resynced(NamedTuple):
    task_ids: tuple[int, ...]
    seq: int
    epoch: str | None


def resync(
    history: History,
    tasks: TaskStore,
    connection_id: str,
    caller: Caller | None,
    *,
    client: ConnectionPoster,
) -> Resynced:
    """Send the agent's delegated tasks as dispatches, then ``resynced`` with the
    offset to resume from next time."""
    agent_id = channel_agent(caller)
    # The head first: whatever is published after this read is resumable from it.
    head = history.head(agent_id)
    sent: list[int] = []
    for task in tasks.by_status(agent_id, Status.DELEGATED):
        if task.agent_id != agent_id or not task.dispatch_message:
            continue
        message = {**json.loads(task.dispatch_message), "resync": True}
        if send_to_connection(connection_id, message, client=client):
            sent.append(task.task_id)
    answer = {
        "type": "resynced",
        "seq": head.seq if head else 0,
        "epoch": head.epoch if head else None,
        "task_ids": sent,
    }
    send_to_connection(connection_id, answer, client=client)
    return Resynced(tuple(sent), head.seq if head else 0, head.epoch if head else None)
