"""Fault switches of the local gateway, for chaos tests: what API Gateway and real
networks do to a channel, on demand and reproducibly (a seeded random source).

``AGENT_CHANNEL_FAULTS`` turns them on for ``agent-channel dev``, as
comma-separated ``name=value`` pairs:

| switch      | effect |
| ----------- | ------ |
| ``drop``    | this fraction of posts answers 200 and delivers nothing (a half-open socket) |
| ``crash``   | per second, the chance that one open socket is cut without a close frame |
| ``close``   | per second, the chance that one open socket is closed cleanly (1001) |
| ``handshake`` | seconds from ``$connect``'s 200 to taking posts (410 until then) |
| ``seed``    | the random seed (default 0) |

With none set, nothing changes: the gateway behaves as API Gateway does.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass, field

ENVIRONMENT_VARIABLE = "AGENT_CHANNEL_FAULTS"
NAMES = ("drop", "crash", "close", "handshake", "seed")


class BadFaultSpec(ValueError):
    """The fault switches could not be read."""


@dataclass
class Faults:
    drop: float = 0.0
    crash: float = 0.0
    close: float = 0.0
    handshake: float = 0.0
    seed: int = 0
    dropped: int = 0
    crashed: int = 0
    closed: int = 0
    _random: random.Random = field(default_factory=random.Random, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        for name in ("drop", "crash", "close"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise BadFaultSpec(f"{name} must be between 0 and 1, got {value}")
        if self.handshake < 0:
            raise BadFaultSpec("handshake must not be negative")
        self._random.seed(self.seed)

    @property
    def any(self) -> bool:
        return bool(self.drop or self.crash or self.close or self.handshake)

    def _chance(self, probability: float) -> bool:
        with self._lock:
            return probability > 0 and self._random.random() < probability

    def drop_post(self) -> bool:
        """Answer this post 200 without delivering it?"""
        if self._chance(self.drop):
            self.dropped += 1
            return True
        return False

    def victim(self, candidates: list[str]) -> tuple[str, bool] | None:
        """Once a second: a socket to end, and whether to cut it (True) or close it."""
        if not candidates:
            return None
        for probability, cut in ((self.crash, True), (self.close, False)):
            if self._chance(probability):
                with self._lock:
                    chosen = self._random.choice(sorted(candidates))
                if cut:
                    self.crashed += 1
                else:
                    self.closed += 1
                return chosen, cut
        return None

    def counts(self) -> dict[str, int]:
        return {"dropped": self.dropped, "crashed": self.crashed, "closed": self.closed}


def parse(spec: str) -> Faults:
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, raw = part.partition("=")
        if name not in NAMES or not raw:
            raise BadFaultSpec(f"unknown fault switch {part!r}; known: {', '.join(NAMES)}")
        try:
            values[name] = float(raw)
        except ValueError:
            raise BadFaultSpec(f"{name} must be a number, got {raw!r}") from None
    return Faults(
        drop=values.get("drop", 0.0),
        crash=values.get("crash", 0.0),
        close=values.get("close", 0.0),
        handshake=values.get("handshake", 0.0),
        seed=int(values.get("seed", 0)),
    )


def from_environment() -> Faults | None:
    spec = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    return parse(spec) if spec else None
