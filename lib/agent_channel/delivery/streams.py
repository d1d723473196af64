"""Stream names: every session of an agent listens on its agent stream, and topic
listeners (UI, legacy clients) on the topic's. The names are the reference's."""

from __future__ import annotations


def agent_stream(agent_id: int) -> str:
    return f"agent:user:{agent_id}"


def topic_stream(topic_id: int) -> str:
    return f"agent:topic:{topic_id}"
