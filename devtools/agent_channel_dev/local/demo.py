"""The demo accounts the local stack starts with, so there is something to connect as."""

from __future__ import annotations

from dataclasses import dataclass

from agent_channel.config import CHANNEL_AGENT_MODEL
from agent_channel.identity import accounts


@dataclass(frozen=True)
class DemoAccounts:
    owner_id: int
    token: str
    agent_id: int
    topic_id: int


def seed() -> DemoAccounts:
    owner = accounts.create_user("demo-owner")
    agent = accounts.create_agent("demo-agent", int(owner.user_id), CHANNEL_AGENT_MODEL)
    topic = accounts.create_topic(
        int(owner.user_id), "demo topic", primary_agent_id=int(agent.user_id)
    )
    token = accounts.issue_token(int(owner.user_id), label="local demo")
    return DemoAccounts(int(owner.user_id), token, int(agent.user_id), int(topic.topic_id))
