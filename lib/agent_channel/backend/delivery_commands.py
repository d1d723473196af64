"""The delivery function's commands (functions/backend): dispatch, decisions,
replies, broadcasts, tasks and presence. No account or token op is here."""

from agent_channel.backend import delivery_ops, task_ops
from agent_channel.backend.router import CommandContext, Registry

REGISTRY = Registry("delivery", delivery_ops.ops, task_ops.ops)
execute = REGISTRY.execute

__all__ = ["REGISTRY", "CommandContext", "execute"]
