"""The fan-out worker: post one slice of a very large stream (delivery.split).

Started asynchronously by the function that broadcasts (the backend), one
invocation per slice of at most FANOUT_INVOCATION_MEMBERS connections, so that no
invocation's time grows with the stream. A connection that answers 410 is removed
here, as the broadcasting function would have.
"""

from __future__ import annotations

# Before any other import: the garbage collector stays out of init.
from agent_channel.lambda_kit import cold_start  # isort: split

from typing import Any

from agent_channel.config import settings
from agent_channel.delivery import split
from agent_channel.delivery.fanout import deliver
from agent_channel.lambda_kit import wiring
from agent_channel.lambda_kit.invocation import lambda_handler
from agent_channel.observability import annotate, logger

management = wiring.management_api()
on_gone = wiring.gone_handler()


@lambda_handler
def handler(event: Any, context: Any) -> dict[str, Any]:
    try:
        piece = split.parse_slice(event)
    except split.BadSlice as refused:
        # An asynchronous event retried would fail the same way: dropped, logged.
        logger.warning("malformed fan-out slice ignored", extra={"error": str(refused)})
        return {"ok": False, "error": refused.code}
    annotate(stream=piece.stream)
    result = deliver(
        piece.stream,
        piece.connection_ids,
        piece.data,
        client=management,
        workers=settings().fanout_workers,
        on_gone=on_gone,
    )
    summary = {
        "stream": piece.stream,
        "delivered": len(result.delivered),
        "gone": len(result.gone),
        "failed": len(result.failed),
    }
    logger.info("fan-out slice", extra=summary)
    return {"ok": True, **summary}


cold_start.ready()
