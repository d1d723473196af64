"""Fan-out: post one message to many connections through ``@connections``.

The posts go out concurrently on at most ``FANOUT_WORKERS`` threads (the poster
is thread-safe, and its pool keeps as many kept-alive sockets), so a thousand
connections cost about ``1000 x latency / FANOUT_WORKERS``, not a thousand
round trips in a row. A stream too large for one invocation is split before it
gets here (``delivery.split``).

Per connection:
- 200: delivered.
- 410 Gone: the socket is closed. The caller's Gone handler removes it exactly
  as ``$disconnect`` would (``delivery.gone``), because API Gateway's
  ``$disconnect`` may be late or never come. The handler is always passed in:
  this module knows nothing of presence or storage.
- 429 / throttling: retried with exponential backoff and full jitter, so a burst
  of throttled workers does not come back in lockstep.
- anything else: failed, reported, and left alone (a later message may succeed).

Traces: the posts do not go through botocore (delivery.poster), so X-Ray would
not see them; a fan-out records them itself, only while tracing is on. One
``fanout`` subsegment per fan-out, annotated with the stream and the counts, with
the gone and failed connection ids (the first ``TRACED_IDS`` of each) as metadata;
inside it, one ``post_to_connection`` subsegment per post, annotated with the
connection id and the outcome, for the first ``TRACED_POSTS`` posts only. Not one
per post: a 10,000-connection fan-out would be 10,000 subsegment documents (about
300 bytes each, streamed to the X-Ray daemon in batches; a segment document is at
most 64 KB, and the region takes 2,600 segment documents a second), and the
tracing would cost more CPU than the posts (docs/OPERATIONS.md, "Traces").
"""

from __future__ import annotations

import enum
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from botocore.exceptions import ClientError

from agent_channel.config import API_GATEWAY_MESSAGE_LIMIT
from agent_channel.errors import Refusal
from agent_channel.observability import count, logger, on_worker_threads, trace_section

THROTTLE_CODES = frozenset(
    {"TooManyRequestsException", "LimitExceededException", "ThrottlingException"}
)
GONE_CODE = "GoneException"
TRACED_POSTS = 20
"""Posts of one fan-out traced one by one (each a subsegment); the rest are counted
in the fan-out's subsegment."""
TRACED_IDS = 100
"""Gone and failed connection ids listed in the fan-out subsegment's metadata
(about 25 bytes each: 200 of them keep it far below the 64 KB of a document)."""


class ConnectionPoster(Protocol):
    """What fan-out needs of an ``@connections`` client: boto3's
    ``apigatewaymanagementapi`` client, or the lean ``delivery.poster`` one."""

    def post_to_connection(self, *, ConnectionId: str, Data: bytes) -> object: ...


class PayloadTooLarge(Refusal, ValueError):
    """The encoded message is over API Gateway's frame limit; nothing was sent."""

    code = "payload_too_large"


class RetryPolicy(NamedTuple):
    """Backoff for throttled posts: full jitter, ``base * 2**n`` capped at ``cap``."""

    attempts: int = 5
    base_seconds: float = 0.05
    cap_seconds: float = 1.0

    def delay(self, retry: int) -> float:
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**retry))


DEFAULT_RETRY = RetryPolicy()


class BroadcastResult(NamedTuple):
    stream: str
    delivered: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    throttle_retries: int = 0
    handed_off: int = 0
    """Connections left to fan-out workers (delivery.split): their outcomes are
    the workers' to report."""

    def as_dict(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "stream": self.stream,
            "delivered": list(self.delivered),
            "gone": list(self.gone),
            "failed": list(self.failed),
        }
        if self.handed_off:
            answer["handed_off"] = self.handed_off
        return answer


class PostStatus(enum.StrEnum):
    DELIVERED = "delivered"
    GONE = "gone"
    FAILED = "failed"


class _Outcome(NamedTuple):
    connection_id: str
    status: PostStatus
    retries: int


GoneHandler = Callable[[str, str], object]
"""Called with (connection_id, stream) for each connection that answered 410."""


def encode(payload: Any) -> bytes:
    """The bytes sent on the wire: compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_checked(payload: Any) -> bytes:
    """``encode``, refusing a message API Gateway would refuse (measured in bytes,
    since multi-byte characters count as what they weigh on the wire)."""
    data = encode(payload)
    if len(data) > API_GATEWAY_MESSAGE_LIMIT:
        raise PayloadTooLarge(
            f"message is {len(data)} bytes; the limit is {API_GATEWAY_MESSAGE_LIMIT}"
        )
    return data


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _is_throttle(error: ClientError) -> bool:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _error_code(error) in THROTTLE_CODES or status == 429


def _post_one(
    client: ConnectionPoster,
    connection_id: str,
    data: bytes,
    retry: RetryPolicy,
) -> _Outcome:
    retries = 0
    while True:
        try:
            client.post_to_connection(ConnectionId=connection_id, Data=data)
        except ClientError as error:
            if _error_code(error) == GONE_CODE:
                return _Outcome(connection_id, PostStatus.GONE, retries)
            if _is_throttle(error) and retries + 1 < retry.attempts:
                time.sleep(retry.delay(retries))
                retries += 1
                continue
            logger.warning(
                "post_to_connection failed",
                extra={"target": connection_id, "code": _error_code(error), "retries": retries},
            )
            return _Outcome(connection_id, PostStatus.FAILED, retries)
        except Exception as error:
            # Connection reset, timeout, ...: not a verdict on the socket. Caught
            # broadly: one connection's failure must not abort the whole fan-out.
            logger.warning(
                "post_to_connection failed",
                extra={"target": connection_id, "error": type(error).__name__},
            )
            return _Outcome(connection_id, PostStatus.FAILED, retries)
        return _Outcome(connection_id, PostStatus.DELIVERED, retries)


def _forget(on_gone: GoneHandler, connection_id: str, stream: str) -> None:
    try:
        on_gone(connection_id, stream)
    except Exception:
        # The socket is closed whatever storage says; the sweeper and the
        # connection's own (late) $disconnect repair what this left.
        logger.exception("could not remove a gone connection", extra={"gone": connection_id})


def deliver(
    stream: str,
    connection_ids: Sequence[str],
    data: bytes,
    *,
    client: ConnectionPoster,
    workers: int,
    on_gone: GoneHandler | None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> BroadcastResult:
    """Post ``data`` to each connection on at most ``workers`` threads at once."""
    if not connection_ids:
        return BroadcastResult(stream)
    with trace_section("fanout") as section:
        result = _deliver(
            stream, connection_ids, data, client, workers, on_gone, retry, section is not None
        )
        if section is not None:
            _annotate(section, result)
    _record_metrics(result)
    return result


def _deliver(
    stream: str,
    connection_ids: Sequence[str],
    data: bytes,
    client: ConnectionPoster,
    workers: int,
    on_gone: GoneHandler | None,
    retry: RetryPolicy,
    traced: bool,
) -> BroadcastResult:
    # Shared by the threads: next() on itertools.count is atomic under the
    # interpreter lock, so exactly TRACED_POSTS posts are traced.
    numbered = itertools.count() if traced else None

    def post(connection_id: str) -> _Outcome:
        if numbered is not None and next(numbered) < TRACED_POSTS:
            outcome = _traced_post(client, connection_id, data, retry)
        else:
            outcome = _post_one(client, connection_id, data, retry)
        if outcome.status is PostStatus.GONE and on_gone is not None:
            # In the worker: cleaning up one gone socket must not hold up the rest.
            _forget(on_gone, connection_id, stream)
        return outcome

    pool_size = max(1, min(workers, len(connection_ids)))
    if pool_size == 1:
        outcomes = [post(connection_id) for connection_id in connection_ids]
    else:
        outcomes = _on_threads(post, connection_ids, pool_size)
    return BroadcastResult(
        stream,
        delivered=tuple(o.connection_id for o in outcomes if o.status is PostStatus.DELIVERED),
        gone=tuple(o.connection_id for o in outcomes if o.status is PostStatus.GONE),
        failed=tuple(o.connection_id for o in outcomes if o.status is PostStatus.FAILED),
        throttle_retries=sum(o.retries for o in outcomes),
    )


def _traced_post(
    client: ConnectionPoster, connection_id: str, data: bytes, retry: RetryPolicy
) -> _Outcome:
    with trace_section("post_to_connection") as section:
        outcome = _post_one(client, connection_id, data, retry)
        if section is not None:
            section.put_annotation("connection_id", connection_id)
            section.put_annotation("outcome", outcome.status.value)
            if outcome.retries:
                section.put_annotation("throttle_retries", outcome.retries)
    return outcome


def _annotate(section: Any, result: BroadcastResult) -> None:
    section.put_annotation("stream", result.stream)
    section.put_annotation("connections", len(result.delivered + result.gone + result.failed))
    section.put_annotation("delivered", len(result.delivered))
    section.put_annotation("gone", len(result.gone))
    section.put_annotation("failed", len(result.failed))
    section.put_annotation("throttle_retries", result.throttle_retries)
    section.put_metadata("gone", list(result.gone[:TRACED_IDS]))
    section.put_metadata("failed", list(result.failed[:TRACED_IDS]))


def _on_threads(
    post: Callable[[str], _Outcome], connection_ids: Sequence[str], threads: int
) -> list[_Outcome]:
    """``post`` each connection on ``threads`` threads that take the next one as
    they finish theirs; the outcomes in the order of ``connection_ids``.

    Not a ThreadPoolExecutor: its future per post, and the caller woken for each
    result, cost as much CPU as a post's HTTP (bench/fanout.py), and every thread
    waiting to do that work competes for the interpreter lock with those posting.
    """
    outcomes: list[_Outcome | None] = [None] * len(connection_ids)
    # One shared iterator over a list: its next() runs in C, atomically under the
    # interpreter lock, so each connection is taken by exactly one thread.
    pending = enumerate(list(connection_ids))
    errors: list[BaseException] = []

    def drain(_: None) -> None:
        for index, connection_id in pending:
            outcomes[index] = post(connection_id)

    traced_drain = on_worker_threads(drain)

    def run() -> None:
        try:
            traced_drain(None)
        except BaseException as error:
            # Raised in the caller, as the executor's map would.
            errors.append(error)

    started = [
        threading.Thread(target=run, name=f"fanout-{n}", daemon=True) for n in range(threads)
    ]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    if errors:
        raise errors[0]
    return [outcome for outcome in outcomes if outcome is not None]


def _record_metrics(result: BroadcastResult) -> None:
    # Counted here, once, in the calling thread: the metrics buffer is not
    # meant to be written from many threads at once.
    for name, value in (
        ("Deliveries", len(result.delivered)),
        ("GoneConnections", len(result.gone)),
        ("FailedDeliveries", len(result.failed)),
        ("ThrottleRetries", result.throttle_retries),
    ):
        if value:
            count(name, value)


def send_to_connection(
    connection_id: str,
    payload: Any,
    *,
    client: ConnectionPoster,
) -> bool:
    """Answer one connection (an error message, say). True if it was delivered.

    A closed socket is not cleaned up here: the caller is that connection's own
    route invocation, and its $disconnect is on the way.
    """
    outcome = _post_one(client, connection_id, encode_checked(payload), DEFAULT_RETRY)
    return outcome.status is PostStatus.DELIVERED


def error_message(code: str, message: str) -> dict[str, str]:
    """The one shape of every error a client receives on its socket."""
    return {"type": "error", "error": code, "message": message}
