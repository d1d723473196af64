"""Fixtures: a fresh moto account per test, the table, the schedule group, a clock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from moto import mock_aws

from agent_channel import accounts, clock
from agent_channel.config import CHANNEL_AGENT_MODEL, settings
from agent_channel.models import Record
from tests.support.clock import FakeClock


def create_table() -> None:
    Record.create_table(billing_mode="PAY_PER_REQUEST", wait=False)


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        create_table()
        boto3.client("scheduler").create_schedule_group(Name=settings().schedule_group)
        yield


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


@dataclass
class World:
    owner_id: int
    owner_token: str
    agent_id: int
    stranger_id: int
    stranger_token: str
    other_ai_id: int
    topic_id: int


@pytest.fixture
def world(aws: None, fake_clock: FakeClock) -> World:
    owner = accounts.create_user("ada")
    stranger = accounts.create_user("mallory")
    agent = accounts.create_agent("claude", owner.user_id, CHANNEL_AGENT_MODEL)
    other_ai = accounts.create_agent("listener", owner.user_id, "gpt-listener")
    topic = accounts.create_topic(owner.user_id, "plans", primary_agent_id=agent.user_id)
    return World(
        owner_id=owner.user_id,
        owner_token=accounts.issue_token(owner.user_id),
        agent_id=agent.user_id,
        stranger_id=stranger.user_id,
        stranger_token=accounts.issue_token(stranger.user_id),
        other_ai_id=other_ai.user_id,
        topic_id=topic.topic_id,
    )
