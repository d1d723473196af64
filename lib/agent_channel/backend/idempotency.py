"""Idempotent backend commands: Powertools' Idempotency utility over its DynamoDB
persistence layer (the ``IdempotencyTable`` of template.yaml, TTL on
``expiration``).

A mutating command may carry ``"idempotency_key": "<caller's id of this
attempt>"``. The first command with a key runs and its answer is stored; the same
key again (a retry after a timeout, a duplicate delivery) gets the stored answer
without running anything. While the first is still running, a second one waits
for its answer. The same key with a different command is refused
(``idempotency_key_reused``), never answered with another command's result.

Refusals are answers too and are stored; an unexpected failure is not (the
record is removed, so a retry runs the command again).
"""

from __future__ import annotations

import os
import time
from functools import cache
from typing import TYPE_CHECKING, Any, cast

from agent_channel.errors import Refusal

if TYPE_CHECKING:
    from collections.abc import Callable

    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
    )

KEY_FIELD = "idempotency_key"
MAX_KEY_LENGTH = 256
EXPIRES_AFTER_SECONDS = 3600
"""How long an answer is kept for retries (the table's TTL removes it after)."""
WAIT_ATTEMPTS = 40
WAIT_SECONDS = 0.05
"""A command whose twin is still running polls for its answer, up to about 40 s
in all (the pause grows to 1 s); the backend function's timeout is 60 s."""
TABLE_ENV = "IDEMPOTENCY_TABLE_NAME"
DEFAULT_TABLE = "agent-channel-idempotency"


class KeyReused(Refusal):
    code = "idempotency_key_reused"


class StillRunning(Refusal):
    code = "idempotency_in_progress"


@cache
def _persistence() -> DynamoDBPersistenceLayer:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    return DynamoDBPersistenceLayer(table_name=os.environ.get(TABLE_ENV, DEFAULT_TABLE))


@cache
def _config() -> IdempotencyConfig:
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig

    return IdempotencyConfig(
        event_key_jmespath="key",
        # The whole command: a key reused for another command is refused.
        payload_validation_jmespath="command",
        expires_after_seconds=EXPIRES_AFTER_SECONDS,
        raise_on_no_idempotency_key=True,
    )


def register_lambda_context(context: Any) -> None:
    """Lets an attempt cut short by the function's timeout expire as in progress
    when the invocation would have ended, instead of after EXPIRES_AFTER_SECONDS."""
    if hasattr(context, "get_remaining_time_in_millis"):
        _config().register_lambda_context(context)


def run_once(
    scope: str, key: str, command: dict[str, Any], run: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The answer of the first ``run`` under ``key`` in ``scope`` (a function's
    registry), running it only if there is none yet."""
    from aws_lambda_powertools.utilities.idempotency import idempotent_function
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )

    def first_run(request: dict[str, Any]) -> dict[str, Any]:
        return run()

    once = cast(
        "Callable[..., dict[str, Any]]",
        idempotent_function(
            data_keyword_argument="request", persistence_store=_persistence(), config=_config()
        )(first_run),
    )

    request = {"key": f"{scope}:{key}", "command": command}
    pause = WAIT_SECONDS
    for _ in range(WAIT_ATTEMPTS):
        try:
            answer: dict[str, Any] = once(request=request)
            return answer
        except IdempotencyValidationError:
            raise KeyReused(f"idempotency key {key!r} was used for a different command") from None
        except IdempotencyAlreadyInProgressError:
            # Race: the same command is running in another invocation right now;
            # its answer, once stored, is ours too.
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
    raise StillRunning(f"the command with idempotency key {key!r} is still running")
