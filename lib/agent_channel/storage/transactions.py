"""Transactions on the single table, and how to read a refused write.

Every store writes through ``commit()`` (transactions) or ``retrying()`` (single
items), and failures are classified here and nowhere else. A cancelled
transaction carries one reason per item (DynamoDB's documented codes):

- ``ConditionalCheckFailed``: an item's condition was false. Someone else won a
  race; retrying would read the same state. The only *refusal*.
- ``TransactionConflict``, ``ThrottlingError``, ``ProvisionedThroughputExceeded``:
  the request itself failed, not its conditions. *Transient*: retried with backoff,
  and never reported as a refusal (a reply must not be dropped because another
  writer briefly held the task).
- ``ValidationError``, ``ItemCollectionSizeLimitExceeded`` and anything unknown:
  a fault of the request, raised as it is.
"""

from __future__ import annotations

import enum
import random
import time
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

from pynamodb.connection import Connection
from pynamodb.exceptions import (
    DeleteError,
    PutError,
    PynamoDBException,
    TransactWriteError,
    UpdateError,
)
from pynamodb.transactions import TransactWrite

from agent_channel.observability import count

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

CONDITION_FAILED = "ConditionalCheckFailed"
TRANSACTION_CONFLICT = "TransactionConflict"
TRANSIENT_REASONS = frozenset(
    {TRANSACTION_CONFLICT, "ThrottlingError", "ProvisionedThroughputExceeded"}
)
"""Cancellation reasons that say nothing about the items' state."""

TRANSIENT_WRITE_ERRORS = frozenset(
    {
        # A single-item write met an item a transaction is writing.
        "TransactionConflictException",
        # Throttling that outlasted botocore's own retries.
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
    }
)
"""Error codes of a single-item write (or of a whole transaction request) that are
worth another attempt."""

MAX_ATTEMPTS = 4
"""Attempts of one write when it keeps failing transiently (then the error is raised)."""

BACKOFF_BASE_SECONDS = 0.02
BACKOFF_CAP_SECONDS = 0.5

T = TypeVar("T")


class Failure(enum.Enum):
    REFUSED = "refused"
    TRANSIENT = "transient"
    FAULT = "fault"


class Refused(Exception):
    """A transaction's condition failed; ``keys`` are the (pk, sk) of the items whose
    ``ConditionalCheckFailed`` cancelled it, and ``items`` those of them that the
    refusal returned as they are (a write sent with ``return_values="ALL_OLD"``), in
    DynamoDB's attribute-value form."""

    def __init__(
        self,
        keys: frozenset[tuple[str, str]],
        items: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(f"condition failed on {sorted(keys)}")
        self.keys = keys
        self.items: Mapping[tuple[str, str], Mapping[str, Any]] = items or {}


@cache
def _dynamodb() -> Connection:
    # One low-level connection per process for transactions; the records keep theirs.
    return Connection()


def transaction() -> TransactWrite:
    return TransactWrite(connection=_dynamodb())


def condition_failed(error: UpdateError | DeleteError | PutError) -> bool:
    """A single-item write refused by its condition."""
    return error.cause_response_code == "ConditionalCheckFailedException"


def cancellation_codes(error: TransactWriteError) -> list[str | None]:
    """One reason code per item of a cancelled transaction, in request order."""
    return [reason.code if reason else None for reason in error.cancellation_reasons or []]


def failed_positions(error: TransactWriteError) -> frozenset[int]:
    """Which items of a cancelled transaction failed their condition."""
    return frozenset(
        i for i, code in enumerate(cancellation_codes(error)) if code == CONDITION_FAILED
    )


def _request_order(writes: TransactWrite) -> list[tuple[str, str]]:
    """The items' keys in the order PynamoDB sends them (condition checks, deletes,
    puts, updates), which is the order of the cancellation reasons."""
    items = [
        *writes._condition_check_items,
        *writes._delete_items,
        *writes._put_items,
        *writes._update_items,
    ]
    keys: list[tuple[str, str]] = []
    for item in items:
        key = item.get("Key") or item.get("Item") or {}
        keys.append((key.get("pk", {}).get("S", ""), key.get("sk", {}).get("S", "")))
    return keys


def classify(error: PynamoDBException) -> Failure:
    """Refused (a condition failed), transient (try again) or a fault (raise)."""
    if isinstance(error, TransactWriteError):
        codes = set(cancellation_codes(error))
        if CONDITION_FAILED in codes:
            # A condition that was false is an answer about the items, whatever
            # else failed beside it.
            return Failure.REFUSED
        if codes & TRANSIENT_REASONS:
            return Failure.TRANSIENT
    elif isinstance(error, UpdateError | DeleteError | PutError) and condition_failed(error):
        return Failure.REFUSED
    if error.cause_response_code in TRANSIENT_WRITE_ERRORS:
        return Failure.TRANSIENT
    return Failure.FAULT


def backoff(attempt: int) -> float:
    """Full jitter: a random pause up to an exponentially growing cap."""
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))


def pause(seconds: float) -> None:
    time.sleep(seconds)


def retrying(write: Callable[[], T], *, attempts: int = MAX_ATTEMPTS) -> T:
    """Run ``write`` (one request to the table), again after a transient failure.

    A refusal or a fault is raised at once, as it is; a transient failure is raised
    once ``attempts`` are used up.
    """
    for attempt in range(attempts):
        if attempt:
            count("TransactionRetries")
            pause(backoff(attempt))
        try:
            return write()
        except PynamoDBException as error:
            if classify(error) is not Failure.TRANSIENT or attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def commit(build: Callable[[TransactWrite], None], *, attempts: int = MAX_ATTEMPTS) -> None:
    """One transaction, built afresh by ``build`` on each attempt.

    Raises Refused when a condition failed (and only then); retries transient
    cancellations with backoff; raises the original error for a fault or when the
    attempts run out.
    """

    sent: list[TransactWrite] = []

    def attempt_once() -> None:
        writes = transaction()
        sent[:] = [writes]
        with writes:
            build(writes)

    try:
        retrying(attempt_once, attempts=attempts)
    except TransactWriteError as error:
        if classify(error) is Failure.REFUSED:
            order = _request_order(sent[0])
            positions = [i for i in failed_positions(error) if i < len(order)]
            reasons = error.cancellation_reasons or []
            returned: dict[tuple[str, str], Mapping[str, Any]] = {}
            for i in positions:
                reason = reasons[i] if i < len(reasons) else None
                if reason is not None and reason.raw_item:
                    returned[order[i]] = reason.raw_item
            raise Refused(frozenset(order[i] for i in positions), returned) from error
        raise
