"""``POST /_backend``: the local stand-in for invoking BackendFunction.

The body is the JSON command Lambda would receive; the answer is what the
function returned. A function that raises is answered as Lambda reports an
unhandled error (``X-Amz-Function-Error`` and an ``errorMessage`` payload), so
the command line treats the local stack and AWS alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agent_channel.observability import logger

BACKEND_FOLDER = "backend"
PATH = "/_backend"
FUNCTION_ERROR_HEADER = "X-Amz-Function-Error"


def mount_backend(app: web.Application, invoke: Callable[[Any], Awaitable[Any]]) -> None:
    async def handle(request: web.Request) -> web.Response:
        try:
            command = await request.json()
        except ValueError:
            return web.json_response({"errorMessage": "the body must be JSON"}, status=400)
        try:
            result = await invoke(command)
        except Exception as error:
            logger.warning("backend command failed", extra={"error": str(error)})
            payload = getattr(error, "payload", None) or {
                "errorMessage": str(error),
                "errorType": type(error).__name__,
            }
            return web.json_response(payload, headers={FUNCTION_ERROR_HEADER: "Unhandled"})
        return web.json_response(result)

    app.router.add_post(PATH, handle)
