"""Where the local stack keeps what outlives one run: its state and the backend secret.

``--data-dir`` or ``$AGENT_CHANNEL_DATA_DIR``, else ``~/.agent-channel/dev``. The
directory is the developer's alone (mode 0700), and so is every file in it (0600).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "AGENT_CHANNEL_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.agent-channel/dev")


def data_dir(given: str | Path | None = None) -> Path:
    chosen = given or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: str) -> None:
    """Write ``data`` so that only the owner can ever read it (no window with wider
    permissions: the file is created 0600, not chmodded afterwards)."""
    ensure_private_dir(path.parent)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(data)
    temporary.chmod(0o600)
    temporary.replace(path)
