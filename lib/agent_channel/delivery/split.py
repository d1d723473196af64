"""Very large streams, split across invocations: no fan-out invocation nears its
timeout, however many connections a stream has.

A stream with more than ``FANOUT_INVOCATION_MEMBERS`` connections is cut into
slices of at most that many. The invocation that broadcasts posts the first slice
itself and hands each other slice to an asynchronous invocation of the fan-out
worker function (``functions/fanout``), whose event carries the stream, the
encoded message and the slice's connection ids. A slice's time is bounded by its
size, not the stream's: at most ``members / POSTS_PER_SECOND`` seconds.

The rate budget (the account's ``@connections`` request quota) is divided by
construction, not negotiated: each process posts at most ``POSTS_PER_SECOND``,
and the worker function's reserved concurrency bounds how many workers run at
once, so the fan-out workers together post at most ``concurrency x their
POSTS_PER_SECOND`` (docs/PERFORMANCE.md, "Very large streams"). Slices beyond
that concurrency wait in Lambda's asynchronous queue; they are not lost.

An asynchronous invocation's event is at most 256 KB: a slice is also cut short
so that its event, message included, fits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from agent_channel.errors import Refusal
from agent_channel.observability import count, logger

EVENT_LIMIT = 256 * 1024
"""Lambda's limit on an asynchronous invocation's payload."""
EVENT_MARGIN = 1024
"""Room for the event's keys and the stream's name."""
SLICE_KEY = "fanout_slice"


class BadSlice(Refusal, ValueError):
    code = "bad_slice"


class Slice(NamedTuple):
    """What one fan-out worker posts: ``data`` to each of ``connection_ids``."""

    stream: str
    data: bytes
    connection_ids: tuple[str, ...]


def plan(connection_ids: Sequence[str], data: bytes, members: int) -> list[list[str]]:
    """The slices, in order: at most ``members`` ids each, and each small enough
    that its worker event (``slice_event``) fits in ``EVENT_LIMIT``."""
    if members < 1:
        raise ValueError("a slice holds at least one connection")
    room = EVENT_LIMIT - EVENT_MARGIN - len(_json(data.decode("utf-8")).encode("utf-8"))
    slices: list[list[str]] = []
    current: list[str] = []
    used = 0
    for connection_id in connection_ids:
        # The id as a JSON string, and the comma before it.
        size = len(_json(connection_id).encode("utf-8")) + 1
        if current and (len(current) >= members or used + size > room):
            slices.append(current)
            current, used = [], 0
        if size > room:
            raise ValueError("a message this large leaves no room for a connection id")
        current.append(connection_id)
        used += size
    if current:
        slices.append(current)
    return slices


def slice_event(stream: str, data: bytes, connection_ids: Sequence[str]) -> dict[str, Any]:
    """The fan-out worker's event. The message travels as the JSON text it is
    (fan-out only ever posts UTF-8 JSON), not base64: a third smaller."""
    return {
        SLICE_KEY: {
            "stream": stream,
            "data": data.decode("utf-8"),
            "connection_ids": list(connection_ids),
        }
    }


def parse_slice(event: Any) -> Slice:
    """The slice a worker event names; ``BadSlice`` for anything else."""
    body = event.get(SLICE_KEY) if isinstance(event, dict) else None
    if not isinstance(body, dict):
        raise BadSlice(f"not a fan-out slice event (no {SLICE_KEY!r})")
    stream, data, ids = body.get("stream"), body.get("data"), body.get("connection_ids")
    if not isinstance(stream, str) or not stream:
        raise BadSlice("a slice names its stream")
    if not isinstance(data, str):
        raise BadSlice("a slice carries its message as text")
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise BadSlice("a slice lists its connection ids")
    return Slice(stream, data.encode("utf-8"), tuple(ids))


Invoke = Callable[[bytes], object]
"""Starts one asynchronous invocation of the worker with this payload."""


class Splitter(NamedTuple):
    """Hands slices of a stream to asynchronous invocations of the worker."""

    members: int
    invoke: Invoke

    def hand_off(self, stream: str, data: bytes, slices: Sequence[Sequence[str]]) -> list[str]:
        """Start one worker per slice; the ids of the slices whose worker could not
        be started (throttled, say), for the caller to post itself: late rather
        than never."""
        left: list[str] = []
        started = 0
        for ids in slices:
            try:
                self.invoke(_json(slice_event(stream, data, ids)).encode("utf-8"))
            except Exception:
                logger.exception(
                    "could not start a fan-out worker", extra={"stream": stream, "slice": len(ids)}
                )
                count("FanoutWorkerFailures")
                left.extend(ids)
                continue
            started += 1
        if started:
            count("FanoutWorkersStarted", started)
        return left


def lambda_invoker(client: Callable[[], Any], function_name: str) -> Invoke:
    """``Invoke`` through a boto3 Lambda client, built on the first hand-off (not at
    init: most invocations never split a stream): an ``Event`` (asynchronous) invoke."""

    def invoke(payload: bytes) -> object:
        return client().invoke(FunctionName=function_name, InvocationType="Event", Payload=payload)

    return invoke


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
