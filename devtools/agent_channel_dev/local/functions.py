"""The Lambda functions of the stack, called in-process as Lambda would call them.

Each ``functions/<folder>/app.py`` is imported on first use (it builds its AWS
clients at import, as in Lambda, so the environment must already point at the
local stack) and called in a worker thread, so a slow handler never stalls the
event loop that serves the sockets it may be posting to.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from agent_channel_dev.instruments.lambda_context import LocalContext

PROJECT_ROOT = Path(__file__).resolve().parents[3]
"""The checkout: ``functions/`` and ``template.yaml`` live here (lib/agent_channel/local/..)."""


class FunctionMissing(LookupError):
    """No ``functions/<folder>/app.py`` for a name the stack refers to."""


def ensure_importable() -> None:
    # functions/ is not an installed package; Lambda puts each folder on the path,
    # the local stack puts the checkout there.
    root = str(PROJECT_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def folder_for_function_name(name: str) -> str:
    """``agent-channel-cancel-offline`` or ``CancelOfflineFunction`` -> ``cancel_offline``.

    A schedule's target is an ARN; locally its function name is matched to a folder.
    """
    base = name.rsplit(":", 1)[-1] if name.startswith("arn:") else name
    base = base.removesuffix("Function")
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", base).lower().replace("-", "_")
    folders = {p.name for p in (PROJECT_ROOT / "functions").iterdir() if (p / "app.py").is_file()}
    if snake in folders:
        return snake
    # A deployed name carries the stack's prefix: take the longest folder it ends with.
    matches = sorted((f for f in folders if snake.endswith("_" + f)), key=len, reverse=True)
    if matches:
        return matches[0]
    raise FunctionMissing(name)


def function_name_from_arn(arn: str) -> str:
    """``arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`` -> NAME."""
    parts = arn.split(":")
    if len(parts) >= 7 and parts[5] == "function":
        return parts[6]
    return arn


class FunctionRunner:
    """Imports and invokes the stack's functions by folder name."""

    def __init__(self) -> None:
        self._modules: dict[str, ModuleType] = {}
        self._lock = threading.Lock()

    def module(self, folder: str) -> ModuleType:
        with self._lock:
            if folder not in self._modules:
                if not (PROJECT_ROOT / "functions" / folder / "app.py").is_file():
                    raise FunctionMissing(folder)
                ensure_importable()
                self._modules[folder] = importlib.import_module(f"functions.{folder}.app")
            return self._modules[folder]

    def exists(self, folder: str) -> bool:
        return (PROJECT_ROOT / "functions" / folder / "app.py").is_file()

    def invoke_sync(self, folder: str, event: Any) -> Any:
        handler = self.module(folder).handler
        return handler(event, LocalContext(function_name=folder))

    async def invoke(self, folder: str, event: Any) -> Any:
        return await asyncio.to_thread(self.invoke_sync, folder, event)
