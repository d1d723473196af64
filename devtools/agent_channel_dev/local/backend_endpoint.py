"""``POST /_backend``: the local stand-in for invoking BackendFunction.

The body is the JSON command Lambda would receive; the answer is what the
function returned. A function that raises is answered as Lambda reports an
unhandled error (``X-Amz-Function-Error`` and an ``errorMessage`` payload), so
the command line treats the local stack and AWS alike.
"""

from __future__ import annotations

from aiohttp import web

from agent_channel.observability import logger
from agent_channel_dev.local.functions import FunctionMissing, FunctionRunner

BACKEND_FOLDER = "backend"
PATH = "/_backend"
FUNCTION_ERROR_HEADER = "X-Amz-Function-Error"


def mount_backend(app: web.Application, runner: FunctionRunner) -> None:
    async def invoke(request: web.Request) -> web.Response:
        try:
            command = await request.json()
        except ValueError:
            return web.json_response({"errorMessage": "the body must be JSON"}, status=400)
        try:
            result = await runner.invoke(BACKEND_FOLDER, command)
        except FunctionMissing:
            return web.json_response({"errorMessage": "functions/backend is missing"}, status=501)
        except Exception as error:
            logger.exception("backend command failed")
            return web.json_response(
                {"errorMessage": str(error), "errorType": type(error).__name__},
                headers={FUNCTION_ERROR_HEADER: "Unhandled"},
            )
        return web.json_response(result)

    app.router.add_post(PATH, invoke)
