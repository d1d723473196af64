"""The local stack's state, kept across restarts (even ``kill -9``) in its data directory.

The mechanism is moto's own request recorder: every request the stack's moto
server receives that may change its state (DynamoDB, Scheduler, EventBridge; not
the reads: ``changes_state``) is appended to
``<data dir>/moto-requests.jsonl`` before it is served, one line each, the file
closed after every line. On the next start the file is replayed, in order,
against the fresh server: the same requests against the same starting state give
the same tables, tasks, decisions, tokens (as digests), counters and schedules.
Requests that failed (a condition refused, say) fail again the same way.

The demo accounts are seeded once, on the first start; their ids and the demo
token (which exists in clear nowhere else) are kept in ``<data dir>/demo.json``,
owner-only, so a plugin connected with that token reconnects after a restart.

What is not kept: open sockets (a restart closes them; plugins reconnect), and
time does not stand still while the stack is down: leases go stale and due grace
schedules fire once it is back, as they would have.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from agent_channel_dev.local.data_dir import write_private

if TYPE_CHECKING:
    from pathlib import Path

    # Only for types: importing the demo module imports the table's records, which
    # read the table name once, at import, before the stack has set it.
    from agent_channel_dev.local.demo import DemoAccounts

REQUESTS_FILE = "moto-requests.jsonl"
DEMO_FILE = "demo.json"


READ_PREFIXES = ("Get", "Describe", "List", "Query", "Scan", "BatchGet")
"""Operations (by name) that only read: DynamoDB's, its stream's, SQS's and
EventBridge's reads all start so (``ReceiveMessage``, which hides a message, does not)."""


def changes_state(method: str, target: str | None) -> bool:
    """Whether a request (its HTTP method, its ``X-Amz-Target`` if any) may change
    what moto holds. Only those are recorded: replaying a read changes nothing,
    the task-event pipe's stream reads and the schedule loop's listings would grow
    the recording by a request every second or so, and a replayed stream read names
    an iterator the fresh server never issued (moto answers 500)."""
    if target:
        return not target.rsplit(".", 1)[-1].startswith(READ_PREFIXES)
    return method not in ("GET", "HEAD")


def _changes_state(entry: dict[str, Any] | None) -> bool:
    """``changes_state`` for one entry of the recording (None: not one)."""
    if entry is None:
        return False
    headers = entry.get("headers") or {}
    return changes_state(str(entry.get("method", "")), headers.get("X-Amz-Target"))


def _entry(line: str) -> dict[str, Any] | None:
    """One line of the recording; None for a line cut short (the stack was killed
    while writing it, before it served the request) or a blank one."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


class LocalState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests = directory / REQUESTS_FILE
        self.demo_file = directory / DEMO_FILE

    def exists(self) -> bool:
        return self.demo_file.is_file() and self.requests.is_file()

    def forget(self) -> None:
        """``--fresh``: start over (the recording and the demo accounts go)."""
        for path in (self.requests, self.demo_file):
            path.unlink(missing_ok=True)

    def replay(self, moto_url: str) -> int:
        """Serve every recorded request that changed state again, in order, to the
        server at ``moto_url``; how many. The recording keeps only those from now on
        (one made before reads were left out of it loses them here)."""
        from moto.moto_api import recorder

        with self.requests.open(encoding="utf-8") as file:
            kept = [line for line in file if _changes_state(_entry(line))]
        compacted = self.requests.with_suffix(".compacting")
        write_private(compacted, "".join(kept))
        compacted.replace(self.requests)
        recorder._location = str(self.requests)
        recorder.replay_recording(target_host=moto_url)
        return len(kept)

    def record(self, start_recording: Callable[[str], None]) -> None:
        """From now on, append every request moto serves to the recording
        (``start_recording``: moto's recorder, in moto's process, to this file)."""
        if not self.requests.exists():
            write_private(self.requests, "")
        start_recording(str(self.requests))

    def save_demo(self, demo: DemoAccounts) -> None:
        write_private(self.demo_file, json.dumps(asdict(demo)))

    def load_demo(self) -> DemoAccounts:
        from agent_channel_dev.local.demo import DemoAccounts

        data = json.loads(self.demo_file.read_text(encoding="utf-8"))
        return DemoAccounts(
            owner_id=int(data["owner_id"]),
            token=str(data["token"]),
            agent_id=int(data["agent_id"]),
            topic_id=int(data["topic_id"]),
        )
