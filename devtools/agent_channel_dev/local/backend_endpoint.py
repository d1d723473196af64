"""``POST /_backend`` and ``POST /_admin``: the local stand-ins for invoking
BackendFunction (delivery) and AdminFunction (accounts and tokens), each reaching
its own function only, as each deployed function has its own invoke permission.

The body is the JSON command Lambda would receive; the answer is what the
function returned. A function that raises is answered as Lambda reports an
unhandled error (``X-Amz-Function-Error`` and an ``errorMessage`` payload), so
the command line treats the local stack and AWS alike.

Only the developer's own tools may call it (the threat model is in the README): a
request must name this server in ``Host`` (no DNS rebinding), carry no foreign
``Origin`` (no cross-site page), send ``Content-Type: application/json`` (which a
page cannot send cross-site without a preflight this server never grants), and
present the per-run secret. Anything else is refused before the body is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent_channel import client_json
from agent_channel.observability import logger
from agent_channel_dev.local.backend_secret import HEADER, presented_matches

BACKEND_FOLDER = "backend"
PATH = "/_backend"
ADMIN_FOLDER = "admin"
ADMIN_PATH = "/_admin"
FUNCTION_ERROR_HEADER = "X-Amz-Function-Error"
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
MAX_BODY_BYTES = 1024 * 1024
"""Lambda's synchronous invocation payload limit is 6 MB; a command is far smaller."""


@dataclass(frozen=True)
class BackendGuard:
    """What a request must show: the per-run secret, and this server's own name."""

    secret: str
    port: int

    def allowed_hosts(self) -> set[str]:
        return {f"{name}:{self.port}" for name in LOOPBACK_NAMES}

    def allowed_origins(self) -> set[str]:
        return {f"http://{host}" for host in self.allowed_hosts()}

    def refusal(self, request: web.Request) -> web.Response | None:
        """Why the request is refused, or None to let it through."""
        if request.headers.get("Host", "") not in self.allowed_hosts():
            return _refused(403, "the Host header must name this server on loopback")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.allowed_origins():
            return _refused(403, "cross-origin requests are not accepted")
        if not presented_matches(request.headers.get(HEADER), self.secret):
            return _refused(401, "the backend secret is missing or wrong")
        if request.content_type != "application/json":
            return _refused(415, "the body must be application/json")
        return None


def _refused(status: int, message: str) -> web.Response:
    return web.json_response({"errorMessage": message}, status=status)


def mount_backend(
    app: web.Application,
    invoke: Callable[[Any], Awaitable[Any]],
    guard: BackendGuard,
    path: str = PATH,
) -> None:
    async def handle(request: web.Request) -> web.Response:
        refused = guard.refusal(request)
        if refused is not None:
            logger.warning("backend request refused", extra={"status": refused.status})
            return refused
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _refused(413, "the command is too large")
        try:
            command = client_json.loads(await request.read())
        except ValueError:
            return _refused(400, "the body must be JSON")
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

    app.router.add_post(path, handle)
