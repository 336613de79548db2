"""Keep the memory a poll frees mapped, so the next poll does not fault it back in page by page.

Every poll allocates a few MB and frees them a moment later: the fetched record values (2-5 KB
each, above Python's small-object allocator, so from glibc's ``malloc``), the decoded vectors,
the features. glibc hands freed memory at the top of its heap back to the kernel once more than
``M_TRIM_THRESHOLD`` (128 KiB to start with) is free there, so each poll's buffers come back as
fresh pages, and every first touch of a page is a fault. On this project's machines that made
allocating and filling a 2 KB ``bytes`` cost ~1.5-1.7 µs instead of ~0.2 (a loop keeping 2,000
slices of a fetch buffer), more than the parsing around it. Measured on the whole agent
(``farm-bench``, 6 pairs, ``embmon run --until-end`` over 100,000 b64 events): CPU 0.91x
the untuned run's (median; 0.83-1.06), system time 0.44 -> 0.25 s; ``embmon replay``, whose
lines come from one reused 1 MiB block, unchanged (1.01x).

:func:`keep_freed_memory` raises the trim threshold and the heap's top pad, and fixes the mmap
threshold (glibc would otherwise move it, and with it the trim threshold, as blocks come and
go), so freed memory stays mapped for the next poll. What it costs: the process keeps the
memory of its busiest moments (up to ``TRIM`` free at the heap's top): the memory benchmark's
peak RSS is ~20 MiB higher (152 against 132 MiB), and as flat over 5M events. Where the C
library is not glibc it does nothing.

>>> keep_freed_memory()  # on glibc
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["keep_freed_memory"]

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h>
TRIM = 64 << 20  # free memory kept at the heap's top before glibc returns it
TOP_PAD = 16 << 20  # extra heap asked for at a time
MMAP = 32 << 20  # blocks this large or larger get their own mapping (glibc's own maximum)


def keep_freed_memory() -> bool:
    """Tune glibc's ``malloc`` for a process that frees what it allocates every poll; False
    where the C library is not glibc, or refuses a setting."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    settings = ((M_MMAP_THRESHOLD, MMAP), (M_TRIM_THRESHOLD, TRIM), (M_TOP_PAD, TOP_PAD))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)
