"""``make mutate`` names each mutant after the module the tests import.

mutmut finds a mutant's tests, and activates the mutant, by that name: named after
its path under ``lib/`` instead, no mutant would ever run (docs/MUTATION.md).
"""

from __future__ import annotations

import subprocess
import sys

import agent_channel.storage.schema as schema

NAMED = """
from pathlib import Path
from agent_channel_dev.mutation import mutant_name
print(mutant_name(Path("lib/agent_channel/storage/schema.py"), "x_presence_version_is__mutmut_1"))
"""


def test_a_mutant_is_named_after_the_module_the_tests_import() -> None:
    # In a process of its own: importing mutmut sets multiprocessing's start method.
    named = subprocess.run(
        [sys.executable, "-c", NAMED], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert named == f"{schema.__name__}.x_presence_version_is__mutmut_1"
