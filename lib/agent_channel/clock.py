"""The one source of "now", so tests and the local stack can move time."""

import time


def now() -> float:
    """Seconds since the epoch, UTC."""
    return time.time()
