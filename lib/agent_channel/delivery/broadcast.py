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
from agent_channel.delivery.split import Splitter, plan
from agent_channel.delivery.streams import agent_stream, topic_stream
from agent_channel.observability import logger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent_channel.delivery.fanout import ConnectionPoster


_splitter: Splitter | None = None


def split_large_streams(splitter: Splitter | None) -> None:
    """From now on, a stream over ``splitter.members`` connections is split across
    fan-out workers (delivery.split). Set once at init by the functions that
    broadcast to whole streams; a process configuration, like the settings."""
    global _splitter
    _splitter = splitter


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
    here, handed_off = _split(stream, data, targets)
    result = deliver(
        stream,
        here,
        data,
        client=client,
        workers=workers or settings().fanout_workers,
        on_gone=on_gone,
        retry=retry,
    )
    if handed_off:
        result = result._replace(handed_off=handed_off)
    logger.info(
        "broadcast",
        extra={
            "stream": stream,
            "delivered": len(result.delivered),
            "gone": len(result.gone),
            "failed": len(result.failed),
            "handed_off": handed_off,
        },
    )
    return result


def _split(stream: str, data: bytes, targets: Sequence[str]) -> tuple[Sequence[str], int]:
    """The connections this invocation posts to, and how many went to workers."""
    splitter = _splitter
    if splitter is None or len(targets) <= splitter.members:
        return targets, 0
    try:
        first, *rest = plan(targets, data, splitter.members)
    except ValueError:
        # A message near the frame limit, of characters JSON escapes twice over,
        # can weigh more than a worker's event may: posted here, all of it.
        logger.warning("message too large to hand to fan-out workers", extra={"stream": stream})
        return targets, 0
    # Those whose worker could not be started are posted here.
    here = first + splitter.hand_off(stream, data, rest)
    return here, len(targets) - len(here)


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
