"""The one shape of a refusal: a stable code and a message, shown to backends and
clients as they are (never a traceback)."""

from __future__ import annotations


class Refusal(Exception):
    """A request refused for a reason the caller can act on."""

    code = "refused"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
