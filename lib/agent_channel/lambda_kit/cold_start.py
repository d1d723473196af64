"""Keep the garbage collector out of a function's initialisation.

A function's ``app.py`` imports this module before anything else and calls
``ready()`` as its last statement. In between, automatic collection is off: an
import allocates hundreds of thousands of objects that all live for the life of
the process, and the collections their allocation triggers (full passes
included) cost tens of milliseconds of a cold start while freeing nothing.
``ready()`` moves everything built so far into the permanent generation, so no
later collection walks it either, and turns collection back on for the
invocations.
"""

from __future__ import annotations

import gc

gc.disable()


def ready() -> None:
    """Init is over: freeze what it built and collect as usual from now on."""
    gc.freeze()
    gc.enable()
