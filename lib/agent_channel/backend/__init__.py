"""The backend's commands: one JSON command in, one JSON answer out. Two Lambda
functions serve them, each with its own registry and IAM policy: the delivery
function (``delivery_commands``: dispatch, decisions, replies, broadcasts,
tasks, presence) and the admin function (``admin_commands``: accounts and
tokens)."""

__all__ = [
    "admin_commands",
    "admin_ops",
    "delivery_commands",
    "delivery_ops",
    "router",
    "task_ops",
]
