"""The cold start benchmark's stack offsets (bench/cold_start.py, ``--stack-offsets``):
a sample moved deeper in the frame stack still runs the same code, from a frame
padded by as many pointers as asked, and offset 0 is the plain sample."""

from __future__ import annotations

import subprocess
import sys

import pytest
from bench.cold_start import CHUNK_SLOTS, IMPORT_APP, at_stack_offset

# The sample's code runs in a function called from the padding's frame, whose
# names are that function and one parameter per slot.
_PROBE = """
import sys
print(len(sys._getframe(1).f_code.co_varnames))
"""


def test_offset_zero_is_the_plain_sample() -> None:
    assert at_stack_offset(IMPORT_APP, 0) == IMPORT_APP


@pytest.mark.parametrize("slots", [1, CHUNK_SLOTS // 2, CHUNK_SLOTS - 1])
def test_a_sample_runs_from_a_frame_padded_by_the_slots_asked(slots: int) -> None:
    done = subprocess.run(
        [sys.executable, "-S", "-c", at_stack_offset(_PROBE, slots)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert int(done.stdout.strip()) == slots + 1
