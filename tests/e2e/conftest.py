"""One dev server per test module (starting one costs seconds), and agent
processes that are always reaped, whatever a test does to them."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.stack import AgentProcess, DevServer, start_agent, start_dev_server


@pytest.fixture(scope="module")
def dev() -> Iterator[DevServer]:
    server = start_dev_server()
    try:
        yield server
    finally:
        assert server.stop() == 0, server.output.lines[-30:]


@pytest.fixture
def agents(dev: DevServer) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(agent_id: int, session_id: str, *extra: str) -> AgentProcess:
        agent = start_agent(dev, agent_id, session_id, *extra)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.process.poll() is None:
            # SIGKILL ends even a process a test froze with SIGSTOP.
            agent.process.send_signal(signal.SIGKILL)
            agent.process.wait(timeout=15)
