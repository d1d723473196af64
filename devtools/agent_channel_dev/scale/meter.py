"""What the simulated fleet costs, second by second: AWS requests, request units,
Lambda invocations and their billed time, as the in-memory store and the
simulation report them."""

from __future__ import annotations

import math
from collections import defaultdict
from types import TracebackType

from agent_channel_dev.scale import aws

Tally = defaultdict[str, float]

LONGEST = "longest_ms:"
"""Prefix of a tally key that holds the longest invocation of a function (its
minute takes the maximum of its seconds, not their sum)."""


def tally() -> Tally:
    return defaultdict(float)


class Meter:
    def __init__(self) -> None:
        self.seconds: dict[int, Tally] = {}
        self._second = 0
        self._current: Tally = tally()
        self.seconds[0] = self._current
        self._function: str | None = None
        self._elapsed_ms = 0.0
        self.longest_ms: dict[str, float] = {}
        """The longest invocation of each function, in milliseconds."""

    @property
    def second(self) -> int:
        return self._second

    @second.setter
    def second(self, value: int) -> None:
        self._second = value
        self._current = self.seconds.setdefault(value, tally())

    def _bucket(self) -> Tally:
        return self._current

    def current(self, key: str) -> float:
        """This second's count so far."""
        return self._current[key]

    def add(self, key: str, amount: float = 1) -> None:
        self._bucket()[key] += amount

    def dynamodb(
        self, operation: str, *, rru: float = 0.0, wru: float = 0.0, requests: int = 1
    ) -> None:
        """``requests`` alike requests (``rru`` and ``wru`` their total): a second's
        heartbeats are billed in one call, a million agents' worth every second."""
        bucket = self._current
        bucket["dynamodb_requests"] += requests
        bucket["dynamodb:" + operation] += requests
        if rru:
            bucket["rru"] += rru
        if wru:
            bucket["wru"] += wru
        if self._function is not None:
            bucket[self._function + ":" + operation] += requests
            self._elapsed_ms += requests * aws.request_ms(operation, aws.MEMORY_MB[self._function])

    def scheduler(self, operation: str) -> None:
        self.call("scheduler", operation)

    def call(self, service: str, operation: str) -> None:
        self._current[f"{service}:{operation}"] += 1
        self._spend(operation)

    def _spend(self, operation: str) -> None:
        if self._function is not None:
            self._current[self._function + ":" + operation] += 1
            self._elapsed_ms += aws.request_ms(operation, aws.MEMORY_MB[self._function])

    @property
    def elapsed_ms(self) -> float:
        """How long the current invocation has run so far (its requests' time
        and its own CPU): what the sweeper's time budget is measured against."""
        return self._elapsed_ms

    def begin(self, function: str) -> None:
        """One Lambda invocation of ``function`` starts (invocations do not nest)."""
        self._function = function
        self._elapsed_ms = aws.CPU_MS_PER_INVOCATION / aws.cpu_share(aws.MEMORY_MB[function])

    def end(self) -> None:
        """It ends: its requests' time plus its own CPU, billed by the millisecond
        at the function's memory size."""
        function = self._function
        assert function is not None
        billed_ms = math.ceil(self._elapsed_ms)
        bucket = self._current
        bucket["lambda_invocations"] += 1
        bucket["lambda:" + function] += 1
        bucket["lambda_gb_seconds"] += aws.MEMORY_MB[function] / 1024 * billed_ms / 1000
        bucket["lambda_busy_ms"] += billed_ms
        longest = LONGEST + function
        if billed_ms > bucket[longest]:
            bucket[longest] = billed_ms
        if billed_ms > self.longest_ms.get(function, 0.0):
            self.longest_ms[function] = billed_ms
        self._function = None

    def invocation(self, function: str) -> _Invocation:
        return _Invocation(self, function)

    # -- reading ----------------------------------------------------------------------
    def minute(self, minute: int) -> Tally:
        total = tally()
        for second in range(minute * 60, minute * 60 + 60):
            for key, value in self.seconds.get(second, {}).items():
                if key.startswith(LONGEST):
                    total[key] = max(total[key], value)
                else:
                    total[key] += value
        return total

    def total(self, key: str) -> float:
        """The whole run's count."""
        return sum(counts.get(key, 0.0) for counts in self.seconds.values())

    def peak_per_second(self, key: str, start: int = 0, end: int | None = None) -> float:
        last = max(self.seconds, default=0) if end is None else end
        return max((self.seconds[s][key] for s in self.seconds if start <= s <= last), default=0.0)

    def minutes(self) -> int:
        return max(self.seconds, default=0) // 60 + 1

    def reset(self) -> None:
        self.seconds.clear()
        self.longest_ms.clear()
        self.second = 0


class _Invocation:
    """``with meter.invocation(function):`` begin, then end whatever happens. A class
    rather than a generator context manager, which costs more to enter and leave:
    a run at a million agents enters tens of millions of them."""

    __slots__ = ("function", "meter")

    def __init__(self, meter: Meter, function: str) -> None:
        self.meter = meter
        self.function = function

    def __enter__(self) -> None:
        self.meter.begin(self.function)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.meter.end()
