"""Every backend command, registered: import this module to run commands.

The router knows no op; each ops module registers its own on import. This module
imports them all, so ``OPS`` is complete wherever ``execute`` is called from.
"""

from agent_channel.backend import admin_ops, delivery_ops
from agent_channel.backend.router import OPS, CommandContext, CommandError, execute

__all__ = ["OPS", "CommandContext", "CommandError", "admin_ops", "delivery_ops", "execute"]
