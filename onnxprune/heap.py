"""Keep freed memory in the process rather than hand it back to the system at once.

glibc's malloc gives every large block (from 128 KiB, rising as blocks are freed) its own
memory map and returns it on ``free``; the next array of that size maps and zeroes fresh pages
again. A prune makes and drops thousands of weight-sized arrays (masking, slicing, serializing
candidates), so a fresh process spends a third of a sweep's time in page faults on a virtual
machine (RESULTS.md, issue 18: 145 s cold against 100 s for the same sweep run a second time
in one process). Taking blocks up to ``BLOCK`` from the heap, and keeping up to ``KEEP`` of it
free at its top, lets later arrays reuse pages already mapped. The cost is memory the process
keeps: free heap up to ``KEEP`` at the top, and freed blocks inside the heap until reused (peak
resident +0.06 GiB on that sweep, +0.1 to 0.4 GiB on the 1.1B decoder). Elsewhere than glibc
this does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

BLOCK = 256 << 20     # blocks up to this size come from the heap
KEEP = 256 << 20      # free heap kept at its top before any is returned
PAD = 64 << 20        # the heap grows by at least this much at a time
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def keep_freed_memory() -> bool:
    """Tune this process's malloc once (see the module docstring); True where it took."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):      # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, BLOCK), (_M_TRIM_THRESHOLD, KEEP), (_M_TOP_PAD, PAD)))
    return _done
