"""The local stack's moto in a process of its own, beside the stack rather than inside it.

On AWS, DynamoDB, Scheduler and EventBridge are services of their own: their
latency does not grow with the gateway's work. In the stack's own process moto
shared one interpreter lock with the gateway, the ``@connections`` API and the
task-event pipe. Under load a transaction took there 1.7 times what moto alone
takes on the same machine, and every request queued on moto's one-request lock
(``moto_server.OneRequestAtATime``) waited that much longer. Here moto has an
interpreter of its own, and a core of its own where the machine has one to spare.

The stack talks to it over a pipe: the server's URL once it serves, then
commands (trim the stream, upkeep, start recording), each answered in turn. The
process ends when the pipe closes, so a stack killed with ``kill -9`` does not
leave its moto behind. Tools may run hooks in moto's process before it serves
(``module:function`` names, each called with the ``MotoServer`` and returning
commands of its own): the load benchmark counts moto's requests that way.
"""

from __future__ import annotations

import gc
import importlib
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_channel_dev.local.moto_server import MotoServer

START_TIMEOUT_SECONDS = 60.0
"""A spawned interpreter imports moto and werkzeug first: seconds on a loaded laptop."""
STOP_TIMEOUT_SECONDS = 10.0
PROCESS_NAME = "moto"

Commands = dict[str, Callable[..., Any]]
Hook = Callable[["MotoServer"], Commands]


class MotoProcessError(RuntimeError):
    """moto's process failed a command, or is gone."""


class MotoProcess:
    """``moto_server.MotoServer`` in a spawned process; the same upkeep, by command."""

    def __init__(self, host: str = "127.0.0.1", hooks: Sequence[str] = ()) -> None:
        self.host = host
        self.hooks = list(hooks)
        """``module:function`` names run in moto's process before it serves."""
        self._url = ""
        self._process: Any = None
        self._conn: Connection | None = None
        # One command at a time: a pipe's messages must not interleave (the stream
        # trim runs on the pipe's thread, a benchmark's counts on another).
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._url

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=serve,
            args=(theirs, self.host, tuple(self.hooks)),
            name=PROCESS_NAME,
            daemon=True,
        )
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        try:
            if not ours.poll(START_TIMEOUT_SECONDS):
                raise MotoProcessError(f"moto did not serve within {START_TIMEOUT_SECONDS:g} s")
            self._url = str(_answer(ours, "moto's process ended before it served"))
        except MotoProcessError:
            self.stop()
            raise

    def call(self, command: str, *args: Any) -> Any:
        """Run a command in moto's process; what it returned."""
        with self._lock:
            if self._conn is None:
                raise MotoProcessError("moto's process is not running")
            try:
                self._conn.send((command, args))
            except OSError as error:
                raise MotoProcessError("moto's process is gone") from error
            return _answer(self._conn, "moto's process is gone")

    def trim_stream(self, table_name: str, through: str) -> int:
        """``MotoServer.trim_stream``, in moto's process."""
        return int(self.call("trim_stream", table_name, through))

    def upkeep(self) -> int:
        """``MotoServer.upkeep``, in moto's process."""
        return int(self.call("upkeep"))

    def record(self, path: str) -> None:
        """``MotoServer.record``, in moto's process."""
        self.call("record", path)

    def stop(self) -> None:
        """Close the pipe (moto's process stops serving and ends); kill it if it lingers."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        process, self._process = self._process, None
        if process is None:
            return
        process.join(STOP_TIMEOUT_SECONDS)
        if process.is_alive():
            process.kill()
            process.join(STOP_TIMEOUT_SECONDS)


def _answer(conn: Connection, gone: str) -> Any:
    """The next answer on the pipe: its value, or its error raised (``gone`` when
    the pipe closed first)."""
    try:
        status, value = conn.recv()
    except (EOFError, OSError) as error:
        raise MotoProcessError(gone) from error
    if status != "ok":
        raise MotoProcessError(str(value))
    return value


def serve(conn: Connection, host: str, hooks: tuple[str, ...]) -> None:
    """moto's process: serve, then answer commands until the pipe closes."""
    # Ctrl-C reaches the terminal's whole process group: the stack stops on it,
    # and its functions' $disconnect writes still need moto while it does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from agent_channel_dev.local.moto_server import MotoServer

    try:
        server = MotoServer(host)
        commands: Commands = {
            "trim_stream": server.trim_stream,
            "upkeep": server.upkeep,
            "record": server.record,
        }
        for name in hooks:
            commands.update(_hook(name)(server))
        server.start()
    except Exception as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    # What is built by now (moto's and botocore's models) lives as long as the
    # process: out of the collector's way (the stack's own process does the same).
    gc.freeze()
    conn.send(("ok", server.url))
    try:
        while True:
            command, args = conn.recv()
            run = commands.get(command)
            try:
                if run is None:
                    raise MotoProcessError(f"no command {command!r}")
                answer: tuple[str, Any] = ("ok", run(*args))
            except Exception as error:
                answer = ("error", f"{type(error).__name__}: {error}")
            conn.send(answer)
    except (EOFError, OSError):
        pass  # the stack closed the pipe, or is gone
    finally:
        server.stop()


def _hook(name: str) -> Hook:
    module, _, function = name.partition(":")
    found = getattr(importlib.import_module(module), function, None)
    if not callable(found):
        raise MotoProcessError(f"no hook {name!r}")
    return found  # type: ignore[no-any-return]
