"""Drive ``agent-channel`` as a user would: the dev server, the operator commands
and agent processes, each a real subprocess on loopback. Every wait is bounded."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SCRIPT = Path(sys.executable).with_name("agent-channel")
START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 30.0
HEARTBEAT_SECONDS = 1
STALE_AFTER_SECONDS = 3
GRACE_SECONDS = 3
IDLE_TIMEOUT_SECONDS = 14
"""Long enough that a sweep on a loaded machine (stale after 3 s, then the next
sweep) acts before the idle timeout closes a frozen plugin's socket."""
"""API Gateway's 10 minutes, shortened: after staleness and a sweep, before a test ends."""
READY = re.compile(r"^READY (ws://\S+) (\{.*\})$")
TOKEN_LINE = re.compile(r"^\s+token\s+(\S+)$")


def command_line(*args: str) -> list[str]:
    if SCRIPT.exists():
        return [str(SCRIPT), *args]
    return [sys.executable, "-m", "agent_channel.cli", *args]


def clean_environment(**extra: str) -> dict[str, str]:
    """The test process's fake AWS settings must not reach the stack: it sets its own."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "POWERTOOLS_"))
        and key not in ("TABLE_NAME", "SCHEDULE_GROUP_NAME", "CALLBACK_URL", "HEARTBEAT_SECONDS")
    }
    environment.update(extra)
    return environment


def app_environment() -> dict[str, str]:
    """For a dev server of another app: a data directory of its own (the server
    keeps its backend secret there) instead of the user's default one, which a
    server started by another test worker may be writing at the same moment."""
    return clean_environment(
        AGENT_CHANNEL_DATA_DIR=tempfile.mkdtemp(prefix="agent-channel-e2e-app-")
    )


def wait_until(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def stop_server(process: subprocess.Popen[str]) -> int:
    """Ctrl-C a local stack and wait for its exit code; kill it if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
            raise
    return int(process.returncode)


class LineReader:
    """Collect a subprocess stream's lines in a thread, so reads never block a test."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))

    def next_matching(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            found = pattern.match(line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern.pattern!r}; got {self.lines[-20:]}")


@dataclass
class DevServer:
    process: subprocess.Popen[str]
    ws_url: str
    backend: str
    owner_id: int
    agent_id: int
    topic_id: int
    token: str
    output: LineReader
    data_dir: Path
    secret_file: Path

    @property
    def secret(self) -> str:
        """The stack's per-run backend secret (what its own tools send)."""
        return self.secret_file.read_text().strip()

    @property
    def callback_url(self) -> str:
        return "http" + self.ws_url.removeprefix("ws")

    def cli(self, *args: str, ok: bool = True) -> Any:
        """Run an operator command with --json against this server; its answer."""
        done = subprocess.run(
            command_line(*args, "--local", self.backend, "--json"),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            # The command line finds the backend secret in the stack's data directory.
            env=clean_environment(AGENT_CHANNEL_DATA_DIR=str(self.data_dir)),
            check=False,
        )
        answer = json.loads(done.stdout) if done.stdout.strip() else None
        if ok:
            assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
        return answer

    def presence(self, agent_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.cli("presence", "--agent", str(agent_id))
        return answer

    def task_status(self, agent_id: int, task_id: int) -> str | None:
        tasks = self.cli("tasks", "--agent", str(agent_id))["tasks"]
        return next((t["status"] for t in tasks if t["task_id"] == task_id), None)

    def new_agent(self, name: str) -> tuple[int, int]:
        """A fresh channel agent of the demo owner, and a topic of it."""
        agent = self.cli("create-agent", "--owner", str(self.owner_id), "--name", name)
        topic = self.cli(
            "create-topic", "--owner", str(self.owner_id), "--agent", str(agent["agent_id"])
        )
        return int(agent["agent_id"]), int(topic["topic_id"])

    def dispatch(self, agent_id: int, topic_id: int, content: str) -> int:
        answers = self.cli(
            "create-task",
            "--topic",
            str(topic_id),
            "--agent",
            str(agent_id),
            "--content",
            content,
            "--dispatch",
        )
        assert answers[-1]["status"] == "delegated", answers
        return int(answers[-1]["task_id"])

    def stop(self) -> int:
        return stop_server(self.process)


def start_dev_server(
    *extra: str, data_dir: Path | None = None, environment: dict[str, str] | None = None
) -> DevServer:
    """A dev server on a free port, keeping its state in ``data_dir`` (a fresh
    temporary directory unless given: pass the same one to restart on its state)."""
    directory = data_dir or Path(tempfile.mkdtemp(prefix="agent-channel-e2e-"))
    process = subprocess.Popen(
        command_line(
            "dev",
            "--port",
            "0",
            "--data-dir",
            str(directory),
            "--heartbeat-seconds",
            str(HEARTBEAT_SECONDS),
            "--stale-after-seconds",
            str(STALE_AFTER_SECONDS),
            "--grace-seconds",
            str(GRACE_SECONDS),
            "--idle-timeout-seconds",
            str(IDLE_TIMEOUT_SECONDS),
            *extra,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_environment(**(environment or {})),
    )
    output = LineReader(process.stdout)
    try:
        ready = output.next_matching(READY, START_TIMEOUT)
    except AssertionError:
        process.kill()
        process.wait(timeout=5)
        raise
    token = next(m.group(1) for line in output.lines if (m := TOKEN_LINE.match(line)))
    details = json.loads(ready.group(2))
    return DevServer(
        process=process,
        ws_url=ready.group(1),
        backend=details["backend"],
        owner_id=int(details["owner_id"]),
        agent_id=int(details["agent_id"]),
        topic_id=int(details["topic_id"]),
        token=token,
        output=output,
        data_dir=directory,
        secret_file=Path(details["secret_file"]),
    )


@dataclass
class AgentProcess:
    """``agent-channel agent --json``: one session of a channel agent, as a process."""

    process: subprocess.Popen[str]
    output: LineReader
    errors: LineReader

    def received(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.output.lines) if line.startswith("{")]

    def wait_for(self, kind: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for message in self.received():
                if message.get("type") == kind and all(
                    message.get(k) == v for k, v in fields.items()
                ):
                    return message
            return None

        return wait_until(found, timeout, f"a {kind} message {fields} at the agent")

    def connected(self, timeout: float = 15.0) -> None:
        wait_until(
            lambda: any(line.endswith("] connected") for line in self.errors.lines),
            timeout,
            "the agent to connect",
        )

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)
            if signum != signal.SIGSTOP:
                self.process.wait(timeout=15)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)


def start_agent(dev: DevServer, agent_id: int, session_id: str, *extra: str) -> AgentProcess:
    process = subprocess.Popen(
        command_line(
            "agent",
            "--url",
            dev.ws_url,
            "--agent-id",
            str(agent_id),
            "--session-id",
            session_id,
            "--heartbeat-seconds",
            str(HEARTBEAT_SECONDS),
            "--json",
            *extra,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # The token travels in the environment, never on a command line.
        env=clean_environment(AGENT_CHANNEL_TOKEN=dev.token),
    )
    agent = AgentProcess(process, LineReader(process.stdout), LineReader(process.stderr))
    agent.connected()
    return agent


@dataclass
class AppServer:
    """``agent-channel dev --template PATH``: another SAM app, served locally."""

    process: subprocess.Popen[str]
    ws_url: str
    moto_url: str
    output: LineReader

    @property
    def callback_url(self) -> str:
        return "http" + self.ws_url.removeprefix("ws")

    @property
    def origin(self) -> str:
        return self.callback_url.rsplit("/", 1)[0]

    def stop(self) -> int:
        return stop_server(self.process)


def start_app_server(template: Path, *extra: str) -> AppServer:
    process = subprocess.Popen(
        command_line("dev", "--port", "0", "--template", str(template), *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=app_environment(),
    )
    output = LineReader(process.stdout)
    try:
        ready = output.next_matching(READY, START_TIMEOUT)
    except AssertionError:
        process.kill()
        process.wait(timeout=5)
        raise
    return AppServer(process, ready.group(1), json.loads(ready.group(2))["moto"], output)
