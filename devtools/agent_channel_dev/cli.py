"""The ``agent-channel`` command line.

- ``agent-channel dev``: the whole stack on this machine (see agent_channel_dev.local.dev).
- ``agent-channel agent``: the reference agent client.
- operator commands (``create-user``, ``issue-token``, ``create-task --dispatch``,
  ``decide``, ``presence``, ...): against the local stack (``--local URL``) or a
  deployed one (``--stack-name NAME``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from agent_channel_dev.cli_agent import add_agent_command
from agent_channel_dev.cli_operator import add_operator_commands, run_operator


def _positive(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 0-65535 (0 picks a free port)")
    return value


def add_dev_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "run the whole stack locally: WebSocket gateway, @connections, moto, schedules"
    p = commands.add_parser("dev", help=summary, description=summary)
    p.add_argument("--port", type=_port, default=8765, help="0 picks a free port (printed)")
    p.add_argument("--stage", default="local")
    p.add_argument("--heartbeat-seconds", type=_positive, default=15)
    p.add_argument("--stale-after-seconds", type=_positive, default=45)
    p.add_argument("--grace-seconds", type=_positive, default=30)
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--data-dir",
        help="where state and the backend secret are kept "
        "(default $AGENT_CHANNEL_DATA_DIR or ~/.agent-channel/dev)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="forget the kept state (tasks, decisions, tokens, demo accounts) and start over",
    )
    p.set_defaults(run=_run_dev)


def _run_dev(args: argparse.Namespace) -> int:
    # Imported late: the dev server sets the environment before the stack loads.
    from agent_channel_dev.local.dev import DevOptions, run

    code = run(
        DevOptions(
            port=args.port,
            stage=args.stage,
            heartbeat_seconds=args.heartbeat_seconds,
            stale_after_seconds=args.stale_after_seconds,
            grace_seconds=args.grace_seconds,
            log_level=args.log_level,
            data_dir=args.data_dir,
            fresh=args.fresh,
        )
    )
    # Everything is stopped and flushed by now; tearing down the interpreter with
    # moto's many backends loaded takes seconds of pure garbage collection, which a
    # Ctrl-C should not have to wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="agent-channel", description="The real-time channel between a backend and its agents."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_dev_command(commands)
    add_agent_command(commands)
    add_operator_commands(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if hasattr(args, "run"):
        return int(args.run(args))
    return run_operator(args)


if __name__ == "__main__":
    sys.exit(main())
