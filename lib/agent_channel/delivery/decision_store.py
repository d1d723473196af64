"""The storage interface of permission decisions, and the value they are read as."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

from agent_channel.errors import Refusal

if TYPE_CHECKING:
    from collections.abc import Sequence


class Decision(NamedTuple):
    """A permission decision of one agent's request."""

    agent_id: int
    request_id: str
    behavior: str
    decided_at: float
    decided_by: int
    reason: str | None = None
    """Why the human decided so, if they said (free text)."""


class DecisionError(Refusal):
    code = "decision_error"


class AlreadyDecided(DecisionError):
    code = "already_decided"


class NotOwner(DecisionError):
    code = "forbidden"


class ReplayRefused(DecisionError):
    code = "not_subscribed"


class DecisionStore(Protocol):
    def record(self, decision: Decision) -> None:
        """Store a decision once. Raises NotOwner when the agent is not the decider's
        (checked in the same write) and AlreadyDecided when the request already has
        a decision."""

    def read_for_replay(
        self, connection_id: str, agent_id: int, request_ids: Sequence[str]
    ) -> list[Decision]:
        """The recorded decisions of ``agent_id`` among ``request_ids``, in that
        order. Raises ReplayRefused unless ``connection_id`` is a live socket of that
        channel agent, read consistently with the decisions."""
