"""Fixtures: a fresh moto account per test, the table, the schedule group, a clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import boto3
import pytest
from moto import mock_aws

from agent_channel import clock
from agent_channel.config import CHANNEL_AGENT_MODEL, settings
from agent_channel.identity import accounts
from agent_channel.storage import schema
from agent_channel.storage.records import LeaseRecord, Record
from agent_channel_dev.local import stack_template
from tests.support.clock import FakeClock

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


@cache
def _dynamodb() -> DynamoDBClient:
    # One client for every test: building one costs far more than the calls it makes.
    return boto3.client("dynamodb")


def create_table() -> None:
    """The table exactly as template.yaml declares it (keys, gsi1, TTL)."""
    client = _dynamodb()
    table_name = Record.Meta.table_name
    client.create_table(**stack_template.table_create_kwargs(table_name))
    ttl_attribute = stack_template.table_ttl_attribute()
    if ttl_attribute:
        client.update_time_to_live(
            TableName=table_name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute},
        )
    # The idempotency utility's table, as template.yaml declares it.
    client.create_table(
        **stack_template.table_create_kwargs(
            os.environ["IDEMPOTENCY_TABLE_NAME"], logical_id=stack_template.IDEMPOTENCY_TABLE
        )
    )


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


def write_crashed_leases(agent_id: int, count: int, last_seen_at: float) -> None:
    """``count`` leases of sessions that crashed without a $disconnect, written
    straight to the table (connections ``crashed000=`` ...), as a crash leaves them."""
    with LeaseRecord.batch_write() as batch:
        for n in range(count):
            batch.save(
                LeaseRecord(
                    *schema.lease_key(agent_id, f"crashed{n:03}="),
                    agent_id=agent_id,
                    connection_id=f"crashed{n:03}=",
                    token="lease-token",
                    session_id=f"crashed{n:03}",
                    last_seen_at=last_seen_at,
                )
            )
