"""The local stack keeps its state across restarts, even ``kill -9``: tasks, tokens
and the demo token survive, a plugin reconnects with the token it had, and
``--fresh`` starts over."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.e2e.stack import DevServer, start_agent, start_dev_server


def task_ids(dev: DevServer) -> list[int]:
    answer = dev.cli("tasks", "--agent", str(dev.agent_id))
    return sorted(int(task["task_id"]) for task in answer["tasks"])


def killed(dev: DevServer) -> None:
    dev.process.send_signal(signal.SIGKILL)
    dev.process.wait(timeout=15)


def test_state_survives_kill_9_and_fresh_starts_over(tmp_path: Path) -> None:
    first = start_dev_server(data_dir=tmp_path)
    try:
        created = first.cli(
            "create-task",
            "--topic",
            str(first.topic_id),
            "--agent",
            str(first.agent_id),
            "--content",
            "kept",
        )
        task_id = int(created[-1]["task_id"] if isinstance(created, list) else created["task_id"])
        user = first.cli("create-user", "kept-user")
        assert user["ok"], user
    finally:
        killed(first)

    second = start_dev_server(data_dir=tmp_path)
    try:
        assert second.token == first.token, "the demo token changed across the restart"
        assert (second.owner_id, second.agent_id, second.topic_id) == (
            first.owner_id,
            first.agent_id,
            first.topic_id,
        )
        assert task_id in task_ids(second)
        # A plugin holding the old token connects to the restarted stack.
        agent = start_agent(second, second.agent_id, "after-restart")
        try:
            agent.connected()
        finally:
            agent.kill()
        # Ids continue where they stopped: nothing is handed out twice.
        again = second.cli("create-user", "next-user")
        assert int(again["user_id"]) > int(user["user_id"]), (again, user)
    finally:
        assert second.stop() == 0

    fresh = start_dev_server("--fresh", data_dir=tmp_path)
    try:
        assert fresh.token != first.token
        assert task_ids(fresh) == []
    finally:
        assert fresh.stop() == 0
