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
from pathlib import Path

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


def _seconds(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _parameter(raw: str) -> tuple[str, str]:
    name, equals, value = raw.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError("must be NAME=VALUE")
    return name, value


def _close_code(raw: str) -> int:
    value = int(raw)
    if not (
        value == 1000 or 1001 <= value <= 1003 or 1007 <= value <= 1014 or 3000 <= value <= 4999
    ):
        raise argparse.ArgumentTypeError("must be a close code a server may send")
    return value


def add_dev_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "serve a SAM WebSocket app locally: gateway, @connections, moto, schedules"
    p = commands.add_parser("dev", help=summary, description=summary)
    p.add_argument("--port", type=_port, default=8765, help="0 picks a free port (printed)")
    p.add_argument(
        "--template",
        type=Path,
        default=None,
        help="a SAM template to serve instead of this project's (no demo accounts, no /_backend)",
    )
    p.add_argument(
        "--parameter",
        type=_parameter,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a template parameter (repeatable)",
    )
    p.add_argument(
        "--stack-name", default="agent-channel", help="names resources as CloudFormation would"
    )
    p.add_argument(
        "--stage", default=None, help="the stage (default: local, or the --template's own)"
    )
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
    p.add_argument(
        "--idle-timeout-seconds", type=_seconds, default=600.0, help="API Gateway: 10 minutes"
    )
    p.add_argument(
        "--max-connection-seconds", type=_seconds, default=7200.0, help="API Gateway: 2 hours"
    )
    p.add_argument(
        "--ordered-frames",
        action="store_true",
        help="run the frames of one socket one after another (AWS promises no order)",
    )
    p.add_argument(
        "--delete-close-code",
        type=_close_code,
        default=1001,
        help="the close code a DELETE on @connections sends (undocumented by AWS)",
    )
    p.add_argument(
        "--max-concurrency", type=_positive, default=8, help="worker processes per function"
    )
    p.set_defaults(run=_run_dev)


def _run_dev(args: argparse.Namespace) -> int:
    # Imported late: the dev server sets the environment before the stack loads.
    from agent_channel_dev.local.dev import DevOptions, run

    code = run(
        DevOptions(
            port=args.port,
            stage=args.stage,
            template=args.template,
            parameters=dict(args.parameter),
            stack_name=args.stack_name,
            idle_timeout_seconds=args.idle_timeout_seconds,
            max_connection_seconds=args.max_connection_seconds,
            ordered_frames=args.ordered_frames,
            delete_close_code=args.delete_close_code,
            max_concurrency=args.max_concurrency,
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
