"""``POST /_backend`` and ``POST /_admin``: the local stand-ins for invoking
BackendFunction (delivery) and AdminFunction (accounts and tokens).

The body is the JSON command Lambda would receive; the answer is what the
function returned. A function that raises is answered as Lambda reports an
unhandled error (``X-Amz-Function-Error`` and an ``errorMessage`` payload), so
the command line treats the local stack and AWS alike. Each path reaches its
own function only, as each deployed function has its own invoke permission: an
admin op sent to ``/_backend`` is an unknown op there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from agent_channel.observability import logger
from agent_channel_dev.local.functions import FunctionMissing, FunctionRunner

BACKEND_FOLDER = "backend"
ADMIN_FOLDER = "admin"
PATHS = {"/_backend": BACKEND_FOLDER, "/_admin": ADMIN_FOLDER}
FUNCTION_ERROR_HEADER = "X-Amz-Function-Error"


def mount_backend(app: web.Application, runner: FunctionRunner) -> None:
    for path, folder in PATHS.items():
        app.router.add_post(path, _invoker(runner, folder))


Invoker = Callable[[web.Request], Awaitable[web.Response]]


def _invoker(runner: FunctionRunner, folder: str) -> Invoker:
    async def invoke(request: web.Request) -> web.Response:
        try:
            command = await request.json()
        except ValueError:
            return web.json_response({"errorMessage": "the body must be JSON"}, status=400)
        try:
            result = await runner.invoke(folder, command)
        except FunctionMissing:
            return web.json_response({"errorMessage": f"functions/{folder} is missing"}, status=501)
        except Exception as error:
            logger.exception("backend command failed", extra={"function": folder})
            return web.json_response(
                {"errorMessage": str(error), "errorType": type(error).__name__},
                headers={FUNCTION_ERROR_HEADER: "Unhandled"},
            )
        return web.json_response(result)

    return invoke
