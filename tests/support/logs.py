"""Capture what the Powertools Logger writes, as parsed JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from agent_channel.observability import logger


@contextmanager
def captured_log_lines() -> Iterator[list[dict[str, Any]]]:
    """Every structured line logged inside the block (the list fills on exit)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        lines.extend(json.loads(line) for line in buffer.getvalue().splitlines() if line)
