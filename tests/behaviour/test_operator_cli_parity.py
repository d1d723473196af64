"""The operator command line builds the backend commands of the parity additions."""

from __future__ import annotations

from agent_channel_dev.cli import parser


def build(*argv: str) -> list[dict[str, object]]:
    args = parser().parse_args(list(argv))
    commands: list[dict[str, object]] = args.build(args)
    return commands


def test_unregister_agent_command() -> None:
    assert build("unregister-agent", "--agent", "2", "--as-user", "1") == [
        {"op": "unregister_agent", "agent_id": 2, "acting_user_id": 1}
    ]


def test_decide_takes_a_reason() -> None:
    [command] = build(
        "decide", "--agent", "2", "--request", "r1", "--by", "1", "--deny", "--reason", "no"
    )
    assert command["reason"] == "no"
    assert command["behavior"] == "deny"
