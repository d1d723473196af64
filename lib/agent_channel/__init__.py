"""agent-channel: the real-time channel between a backend and its AI agents."""

__version__ = "0.1.0"
