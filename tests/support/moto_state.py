"""moto's state, saved and put back: a set-up made once, then restored for every run.

An exploration of interleavings runs one scenario hundreds of times, each from the
same start: a fresh account, the tables, the sessions the scenario opens. Built
through the handlers, that start costs about as much as the run itself. Saved once
(every backend the set-up reached, deep-copied) it is put back for each later run
in a fraction of that, inside a fresh ``mock_aws`` as before.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from moto.core.base_backend import BackendDict
from moto.sqs.models import SQSBackend


@dataclass(frozen=True)
class Saved:
    """Each backend in use (service, account, region), as it was when saved."""

    backends: tuple[tuple[BackendDict[Any], str, str, Any], ...]


def save() -> Saved:
    """The state of every backend in use now, copied (inside ``mock_aws``)."""
    found = [
        (backends, account, region, backend)
        for backends in BackendDict._instances
        for account, region, backend in backends.iter_backends()
    ]
    copies = _copy([backend for *_, backend in found])
    return Saved(
        tuple(
            (backends, account, region, copied)
            for (backends, account, region, _), copied in zip(found, copies, strict=True)
        )
    )


def restore(saved: Saved) -> None:
    """Put ``saved`` back, as a copy of its own: call it first thing in a fresh
    ``mock_aws`` (whose start reset every backend), before any request."""
    copies = _copy([backend for *_, backend in saved.backends])
    for (backends, account, region, _), backend in zip(saved.backends, copies, strict=True):
        # Indexing the account registers the service as in use, so that the mock's
        # stop resets it as it resets any other.
        dict.__setitem__(backends[account], region, backend)


def _copy(backends: list[Any]) -> list[Any]:
    # One deep copy of them all, so that references between backends stay references.
    return copy.deepcopy(backends, _new_locks(backends))


def _new_locks(backends: Iterable[Any]) -> dict[int, Any]:
    """A copy's locks are its own, new: an SQS queue's Condition (its long polls
    wait on it) cannot be copied, and is not state."""
    return {
        id(queue._messages_lock): threading.Condition()
        for backend in backends
        if isinstance(backend, SQSBackend)
        for queue in backend.queues.values()
    }
