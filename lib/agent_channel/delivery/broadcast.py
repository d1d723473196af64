"""Broadcast: send one message to every connection of a stream.

A stream's connections come from one consistent Query of its membership
partition (``delivery.members``); the posts go out through ``delivery.fanout``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent_channel.config import settings
from agent_channel.delivery.fanout import (
    DEFAULT_RETRY,
    BroadcastResult,
    GoneHandler,
    RetryPolicy,
    deliver,
    encode_checked,
)
from agent_channel.delivery.members import stream_connections
from agent_channel.delivery.streams import agent_stream, topic_stream
from agent_channel.observability import logger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent_channel.delivery.fanout import ConnectionPoster


def broadcast_to_stream(
    stream: str,
    payload: Any,
    *,
    client: ConnectionPoster,
    on_gone: GoneHandler | None,
    workers: int | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    connection_ids: Sequence[str] | None = None,
) -> BroadcastResult:
    """Send ``payload`` to every connection of ``stream``; ``on_gone`` removes each
    connection that answers 410.

    Raises PayloadTooLarge before any read or post. ``connection_ids`` lets a
    caller that sends several messages to one stream read its members once.
    """
    data = encode_checked(payload)
    targets = stream_connections(stream) if connection_ids is None else connection_ids
    result = deliver(
        stream,
        targets,
        data,
        client=client,
        workers=workers or settings().fanout_workers,
        on_gone=on_gone,
        retry=retry,
    )
    logger.info(
        "broadcast",
        extra={
            "stream": stream,
            "delivered": len(result.delivered),
            "gone": len(result.gone),
            "failed": len(result.failed),
        },
    )
    return result


def broadcast_to_agent(
    agent_id: int,
    payload: Any,
    *,
    client: ConnectionPoster,
    on_gone: GoneHandler | None,
    workers: int | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> BroadcastResult:
    """Every connection on ``agent:user:<agent_id>`` (every session of the agent)."""
    return broadcast_to_stream(
        agent_stream(agent_id),
        payload,
        client=client,
        on_gone=on_gone,
        workers=workers,
        retry=retry,
    )


def broadcast_to_topic(
    topic_id: int,
    payload: Any,
    *,
    client: ConnectionPoster,
    on_gone: GoneHandler | None,
    workers: int | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> BroadcastResult:
    """Every connection on ``agent:topic:<topic_id>``."""
    return broadcast_to_stream(
        topic_stream(topic_id),
        payload,
        client=client,
        on_gone=on_gone,
        workers=workers,
        retry=retry,
    )
