import platform

import numpy as np

from speakertag.allocator import reuse_freed_memory


def test_reuse_freed_memory_tunes_glibc_and_nothing_else():
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert reuse_freed_memory() is glibc
    assert reuse_freed_memory() is glibc  # again: the same settings
    blocks = [np.ones(2 ** 22, np.float32) for _ in range(4)]  # 16 MB arrays still come and go
    assert sum(float(b.sum()) for b in blocks) == 4 * 2 ** 22
