"""The presence world with a real ``@connections`` endpoint: sockets open and close
on a MemorySink, and posts answer 200 or 410 as API Gateway's would. Posts and
handshakes are steps of an interleaving (see ``interleave.checkpoint``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto import mock_aws

from agent_channel.config import settings
from agent_channel.delivery.broadcast import broadcast_to_agent
from agent_channel.identity import accounts
from agent_channel.lambda_kit import wiring
from agent_channel.storage import schema
from agent_channel.storage.records import StreamMemberRecord
from agent_channel_dev.local.connections_api import MemorySink, memory_connections_api
from tests.support.clock import FakeClock
from tests.support.fixtures import create_table
from tests.support.footprint import connection_resource
from tests.support.interleave import checkpoint
from tests.support.management_server import MOTO_CONFIG, ROUTE_MODULES, STAGE
from tests.support.presence_world import PresenceWorld


class DeliveryWorld(PresenceWorld):
    def __init__(self, clock: FakeClock, sink: MemorySink, client: Any) -> None:
        super().__init__(clock)
        self.sink = sink
        self.client = client
        self.topic_id = accounts.create_topic(
            self.owner_id, "work", primary_agent_id=self.agent_id
        ).topic_id

    def open(self, name: str, session_id: str | None = None) -> str:
        connection_id = super().open(name, session_id)
        self.sink.open(connection_id)
        return connection_id

    # -- actors --------------------------------------------------------------------
    def subscribe_with_handshake(self, name: str, session_id: str) -> Callable[[], Any]:
        """$connect, then API Gateway completes the handshake (a step of its own: a
        post before it answers 410), then the plugin's first heartbeat."""
        subscribe = self.subscribe(name, session_id)

        def act() -> Any:
            status = subscribe()
            if status == 200:
                checkpoint("Handshake", connection_resource(f"{name}="))
                self.sink.open(f"{name}=")
                self.gateway.send(f"{name}=", {"action": "heartbeat"})
            return status

        return act

    def broadcast(self, payload: dict[str, Any]) -> Callable[[], Any]:
        """A backend message to the agent's stream, one post at a time (one worker
        thread: each post is a step of the interleaving)."""

        def act() -> Any:
            return broadcast_to_agent(
                self.agent_id,
                payload,
                client=self.client,
                on_gone=wiring.gone_handler(),
                workers=1,
            )

        return act

    # -- observation ---------------------------------------------------------------
    def is_member(self, connection_id: str) -> bool:
        try:
            StreamMemberRecord.get(
                *schema.member_key(f"agent:user:{self.agent_id}", connection_id),
                consistent_read=True,
            )
        except StreamMemberRecord.DoesNotExist:
            return False
        return True


@contextmanager
def fresh_delivery_world(clock: FakeClock) -> Iterator[DeliveryWorld]:
    with mock_aws(config=MOTO_CONFIG), memory_connections_api(stage=STAGE) as (sink, server):
        create_table()
        boto3.client("scheduler").create_schedule_group(Name=settings().schedule_group)
        client = wiring.management_api(server.endpoint_url(STAGE))
        # The route functions post through this server too, for the world's run.
        modules = [importlib.import_module(name) for name in ROUTE_MODULES]
        saved = [module.management for module in modules]
        for module in modules:
            module.management = client
        try:
            yield DeliveryWorld(clock, sink, client)
        finally:
            for module, original in zip(modules, saved, strict=True):
                module.management = original
