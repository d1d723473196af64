"""The one shape of a refusal: a stable code and a message, shown to backends and
clients as they are (never a traceback)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping


class Refusal(Exception):
    """A request refused for a reason the caller can act on. ``details`` are extra
    JSON fields of the answer (the state the refusal was decided on)."""

    code = "refused"

    def __init__(
        self, message: str, *, code: str | None = None, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        if code is not None:
            self.code = code
