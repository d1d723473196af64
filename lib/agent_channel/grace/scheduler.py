"""The grace scheduler's interface, and what a grace schedule carries.

Presence schedules a grace when a session (or the last one) leaves, and withdraws
it when the agent comes back; ``cancel_offline`` receives the cancellation.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable


class GraceCancellation(NamedTuple):
    """What a grace schedule carries to ``cancel_offline``."""

    agent_id: int
    subscription_token: str
    session_id: str | None = None

    def payload(self) -> dict[str, object]:
        body: dict[str, object] = {
            "agent_id": self.agent_id,
            "subscription_token": self.subscription_token,
        }
        if self.session_id:
            body["session_id"] = self.session_id
        return body


class GraceScheduler(Protocol):
    def schedule(self, cancellation: GraceCancellation, due_at: float) -> None:
        """Arrange for ``cancel_offline`` to run with ``cancellation`` at ``due_at``."""

    def withdraw(self, agent_id: int, session_id: str | None) -> None:
        """Delete pending schedules for the agent (and session); best effort."""

    def withdraw_all(self, agent_id: int, session_ids: Iterable[str]) -> int:
        """Delete the agent-wide schedule and those of the given sessions; how many
        were there to delete."""


def schedule_name(agent_id: int, session_id: str | None) -> str:
    """Deterministic, within Scheduler's rules: 1-64 chars of ``0-9a-zA-Z-_.``.

    A session id is free text, so the session part is a digest of it.
    """
    name = f"grace-{agent_id}"
    if session_id:
        name += "-s-" + hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:20]
    return name
