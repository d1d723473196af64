"""Whether an acting user may have the backend act for them.

A backend command may name the user it acts for (``acting_user_id``); when it
does, the command runs only if that user could do it themselves. Without one,
the backend is trusted as before (it holds the invoke permission).
"""

from __future__ import annotations

from agent_channel.errors import Refusal
from agent_channel.identity import accounts


class NotPermitted(Refusal):
    """The acting user may not do this. The same answer whether or not the target
    exists, so a refusal reveals nothing about other users' agents or topics."""

    code = "forbidden"


def check_may_dispatch(acting_user_id: int, topic_id: int | None) -> None:
    """Dispatching a task speaks in its topic: the owner or a reader of the topic."""
    topic = accounts.get_topic(topic_id) if topic_id is not None else None
    if topic is None or not topic.readable_by(acting_user_id):
        raise NotPermitted(f"user {acting_user_id} may not dispatch this task")


def check_may_decide(acting_user_id: int, agent_id: int) -> None:
    """A permission decision for an agent is its owner's to make."""
    agent = accounts.get_user(agent_id)
    if agent is None or agent.created_by != acting_user_id:
        raise NotPermitted(f"user {acting_user_id} may not decide for agent {agent_id}")
