"""Transactions on the single table, and how to read a refused write.

Every store writes through ``transaction()`` and classifies failures here, so a
condition that failed (someone else won the race) is told apart in one way
everywhere from a failure of the request itself.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from pynamodb.connection import Connection
from pynamodb.transactions import TransactWrite

if TYPE_CHECKING:
    from pynamodb.exceptions import DeleteError, PutError, TransactWriteError, UpdateError

CONDITION_FAILED = "ConditionalCheckFailed"
TRANSACTION_CONFLICT = "TransactionConflict"


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


def failed_positions(error: TransactWriteError) -> set[int]:
    """Which items of a cancelled transaction failed their condition."""
    return {i for i, code in enumerate(cancellation_codes(error)) if code == CONDITION_FAILED}
