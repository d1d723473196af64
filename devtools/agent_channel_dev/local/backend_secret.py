"""The per-run secret that ``POST /_backend`` requires.

The backend endpoint can create tokens, dispatch work to a connected agent and
answer its permission requests as the owner, so a web page the developer happens
to visit must not reach it. A fresh secret is minted on every start, printed once
in the banner, and written to ``<data dir>/backend-secret`` (owner-only); the
command line takes it from ``$AGENT_CHANNEL_BACKEND_SECRET`` or from that file.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from agent_channel_dev.local.data_dir import data_dir, write_private

SECRET_ENV = "AGENT_CHANNEL_BACKEND_SECRET"  # noqa: S105 (a variable's name)
SECRET_FILE = "backend-secret"  # noqa: S105 (a file name)
HEADER = "Authorization"
SCHEME = "Bearer "


def secret_file(directory: Path) -> Path:
    return directory / SECRET_FILE


def mint(directory: Path) -> str:
    secret = secrets.token_urlsafe(32)
    write_private(secret_file(directory), secret + "\n")
    return secret


def for_client(directory: str | Path | None = None) -> str | None:
    """The secret a command-line call presents: the environment's, else the file's."""
    given = os.environ.get(SECRET_ENV)
    if given:
        return given.strip()
    try:
        return secret_file(data_dir(directory)).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def authorization(secret: str) -> dict[str, str]:
    return {HEADER: SCHEME + secret}


def presented_matches(header: str | None, secret: str) -> bool:
    if not header or not header.startswith(SCHEME):
        return False
    # Constant time: the comparison must not tell how much of a guess was right.
    return hmac.compare_digest(header[len(SCHEME) :].encode(), secret.encode())
