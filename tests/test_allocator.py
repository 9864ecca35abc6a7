import platform
import subprocess
import sys

import pytest

from speakertag.allocator import reuse_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Six 16 MB arrays made and freed ten times; prints the page faults after the first round.
ROUNDS = """
import resource, sys
import numpy as np
from speakertag.allocator import reuse_freed_memory
if sys.argv[1] == "tuned":
    assert reuse_freed_memory()
def round_():
    blocks = [np.ones(2 ** 22, np.float32) for _ in range(6)]
    return sum(float(b.sum()) for b in blocks)
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_reuse_freed_memory_tunes_glibc_and_nothing_else():
    assert reuse_freed_memory() is GLIBC
    assert reuse_freed_memory() is GLIBC  # again: the same settings


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's")
def test_freed_arrays_are_reused_without_page_faults():
    # Processes of their own: the settings are the whole process's.
    faults = {how: int(subprocess.run([sys.executable, "-c", ROUNDS, how], capture_output=True, text=True,
                                      check=True).stdout) for how in ("tuned", "untuned")}
    one_round_pages = 6 * 2 ** 24 // 4096
    assert faults["tuned"] < one_round_pages < faults["untuned"]  # untuned: the pages of most rounds
