"""A post rate budget: at most so many ``@connections`` posts per second from one
process, whatever the number of fan-out threads.

API Gateway's account quota (10,000 requests per second per region, shared by
every API, ``@connections`` included) is the physical limit of fan-out; a 429
is retried with backoff, but a process that posts as fast as its threads allow
makes every other function of the account meet 429s too. The budget is a
generic cell rate algorithm (a token bucket without a refill thread): each post
reserves the next slot under a lock and sleeps outside it until the slot comes.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class RateBudget:
    def __init__(
        self,
        per_second: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("a rate budget needs a positive rate and a burst of at least 1")
        self.per_second = per_second
        self._interval = 1.0 / per_second
        # How far ahead of the steady rate a burst may run.
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for this post's slot; returns how long it waited."""
        with self._lock:
            now = self._clock()
            slot = max(self._next, now)
            self._next = slot + self._interval
        wait = slot - now - self._tolerance
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0
