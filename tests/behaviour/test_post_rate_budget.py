"""The post rate budget keeps a process under its share of the account's
@connections quota, across all fan-out threads."""

from __future__ import annotations

import threading
import time

import pytest

from agent_channel.delivery.rate import RateBudget


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 9))


def test_posts_beyond_the_burst_wait_for_their_slot_at_the_steady_rate() -> None:
    fake = FakeTime()
    budget = RateBudget(100, burst=3, clock=fake.clock, sleep=fake.sleep)
    waits = [budget.acquire() for _ in range(6)]
    # Three at once (the burst), then one every 10 ms.
    assert [round(w, 9) for w in waits] == [0.0, 0.0, 0.0, 0.01, 0.02, 0.03]
    assert fake.slept == [0.01, 0.02, 0.03]


def test_an_idle_budget_does_not_save_up_more_than_its_burst() -> None:
    fake = FakeTime()
    budget = RateBudget(100, burst=2, clock=fake.clock, sleep=fake.sleep)
    budget.acquire()
    fake.now = 60.0  # a minute idle
    waits = [round(budget.acquire(), 9) for _ in range(4)]
    assert waits == [0.0, 0.0, 0.01, 0.02]


def test_threads_share_one_budget() -> None:
    budget = RateBudget(2000, burst=1)
    started = time.monotonic()

    def post_many() -> None:
        for _ in range(50):
            budget.acquire()

    threads = [threading.Thread(target=post_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 400 posts at 2,000 per second: at least 0.2 s (less one interval), whatever the threads.
    assert time.monotonic() - started >= 399 / 2000


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-5, 1), (10, 0)])
def test_a_budget_needs_a_positive_rate_and_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="positive rate"):
        RateBudget(rate, burst=burst)
