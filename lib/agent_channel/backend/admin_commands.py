"""The admin function's commands (functions/admin): users, agents, topics and
bearer tokens. No delivery op is here."""

from agent_channel.backend import admin_ops
from agent_channel.backend.router import CommandContext, Registry

REGISTRY = Registry("admin", admin_ops.ops)
execute = REGISTRY.execute

__all__ = ["REGISTRY", "CommandContext", "execute"]
