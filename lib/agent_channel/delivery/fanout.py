"""Fan-out: post one message to many connections through ``@connections``.

The posts go out concurrently on a bounded pool of threads (boto3 clients are thread-safe and the
management client's HTTP pool is sized to the same bound), so a thousand
connections cost about ``1000 x latency / FANOUT_WORKERS``, not a thousand
round trips in a row.

Per connection:
- 200: delivered.
- 410 Gone: the socket is closed. The caller's Gone handler removes it exactly
  as ``$disconnect`` would (``delivery.gone``), because API Gateway's
  ``$disconnect`` may be late or never come. The handler is always passed in:
  this module knows nothing of presence or storage.
- 429 / throttling: retried with exponential backoff and full jitter, so a burst
  of throttled workers does not come back in lockstep.
- anything else: failed, reported, and left alone (a later message may succeed).
"""

from __future__ import annotations

import enum
import json
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import ClientError

from agent_channel.config import API_GATEWAY_MESSAGE_LIMIT
from agent_channel.errors import Refusal
from agent_channel.observability import count, logger, on_worker_threads

THROTTLE_CODES = frozenset(
    {"TooManyRequestsException", "LimitExceededException", "ThrottlingException"}
)
GONE_CODE = "GoneException"


class ConnectionPoster(Protocol):
    """What fan-out needs of an ``@connections`` client: boto3's
    ``apigatewaymanagementapi`` client, or the lean ``delivery.poster`` one."""

    def post_to_connection(self, *, ConnectionId: str, Data: bytes) -> object: ...


class PayloadTooLarge(Refusal, ValueError):
    """The encoded message is over API Gateway's frame limit; nothing was sent."""

    code = "payload_too_large"


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for throttled posts: full jitter, ``base * 2**n`` capped at ``cap``."""

    attempts: int = 5
    base_seconds: float = 0.05
    cap_seconds: float = 1.0

    def delay(self, retry: int) -> float:
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**retry))


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class BroadcastResult:
    stream: str
    delivered: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    throttle_retries: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "delivered": list(self.delivered),
            "gone": list(self.gone),
            "failed": list(self.failed),
        }


class PostStatus(enum.StrEnum):
    DELIVERED = "delivered"
    GONE = "gone"
    FAILED = "failed"


@dataclass(frozen=True)
class _Outcome:
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

    def post(connection_id: str) -> _Outcome:
        outcome = _post_one(client, connection_id, data, retry)
        if outcome.status is PostStatus.GONE and on_gone is not None:
            # In the worker: cleaning up one gone socket must not hold up the rest.
            _forget(on_gone, connection_id, stream)
        return outcome

    pool_size = max(1, min(workers, len(connection_ids)))
    if pool_size == 1:
        outcomes = [post(connection_id) for connection_id in connection_ids]
    else:
        with ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="fanout") as pool:
            outcomes = list(pool.map(on_worker_threads(post), connection_ids))
    result = BroadcastResult(
        stream,
        delivered=tuple(o.connection_id for o in outcomes if o.status is PostStatus.DELIVERED),
        gone=tuple(o.connection_id for o in outcomes if o.status is PostStatus.GONE),
        failed=tuple(o.connection_id for o in outcomes if o.status is PostStatus.FAILED),
        throttle_retries=sum(o.retries for o in outcomes),
    )
    _record_metrics(result)
    return result


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
