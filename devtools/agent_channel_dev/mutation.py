"""``make mutate``: mutmut's command line, with mutants named as the tests import them.

mutmut 3 names each mutant after its file's path and removes only a ``src.``
prefix. The runtime package lives under ``lib/``, so without this its mutants are
named ``lib.agent_channel...`` while the code under test runs as
``agent_channel...``: mutmut then finds no test for any mutant (and stops), and
a mutant it activated would never match the module it is in, so it would
survive every test. Removing the ``lib.`` prefix too makes both names agree.

Run it as mutmut itself: ``python -m agent_channel_dev.mutation run|results|show``.
Every mutmut process of a run (mutant generation, the stats run, each mutant's
worker) is forked from this one, so each sees the same names.
"""

from __future__ import annotations

from pathlib import Path

import mutmut.__main__ as mutmut_main
import mutmut.mutation.file_mutation as file_mutation
import mutmut.utils.format_utils as format_utils

SOURCE_ROOT_PREFIX = "lib."
"""What the runtime package's directory adds before its import name."""

_named_by_path = format_utils.get_mutant_name


def mutant_name(relative_source_path: Path, mutant_method_name: str) -> str:
    """mutmut's name for a mutant, under the module name the tests import."""
    return _named_by_path(relative_source_path, mutant_method_name).removeprefix(SOURCE_ROOT_PREFIX)


def main() -> None:
    # Every module that imported get_mutant_name by name holds its own reference
    # (not re-exported, hence through the module's namespace).
    for module in (format_utils, mutmut_main, file_mutation):
        vars(module)["get_mutant_name"] = mutant_name
    mutmut_main.cli()


if __name__ == "__main__":
    main()
