"""The local stack's state, kept across restarts (even ``kill -9``) in its data directory.

The mechanism is moto's own request recorder: every request the embedded moto
server receives (DynamoDB, Scheduler, EventBridge) is appended to
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
from dataclasses import asdict
from typing import TYPE_CHECKING

from agent_channel_dev.local.data_dir import write_private

if TYPE_CHECKING:
    from pathlib import Path

    # Only for types: importing the demo module imports the table's records, which
    # read the table name once, at import, before the stack has set it.
    from agent_channel_dev.local.demo import DemoAccounts

REQUESTS_FILE = "moto-requests.jsonl"
DEMO_FILE = "demo.json"


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
        """Serve every recorded request again, in order, to the server at ``moto_url``."""
        from moto.moto_api import recorder

        recorder._location = str(self.requests)
        recorder.replay_recording(target_host=moto_url)
        with self.requests.open(encoding="utf-8") as file:
            return sum(1 for _ in file)

    def record(self) -> None:
        """From now on, append every request moto serves to the recording."""
        from moto.moto_api import recorder

        if not self.requests.exists():
            write_private(self.requests, "")
        recorder._location = str(self.requests)
        recorder.start_recording()

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
