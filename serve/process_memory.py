"""Steady memory for a serving process: glibc's malloc is told to map large blocks on their own, so that a freed
one goes back to the system at once.

By default glibc raises its mmap threshold each time it frees a mapped block (up to 32 MiB); blocks below the new
threshold then come from the heap, which keeps the holes they leave. A server allocates and frees batch states,
logits and cached prompt states of many sizes as requests come and go, so its heap fragments and its RSS creeps up
with every load (docs/serving.md has the measurements). A fixed threshold stops the creep: blocks from the threshold
up are mapped and unmapped whole, and the smaller ones, which repeat in a few sizes, reuse the heap's holes.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)
# Below: a 16-row step's logits (4 MiB at a 65536-token vocabulary) and the 0.1B shape's cached prompt states (2.4
# MB), which repeat every step or request and stay cheap to reuse. From here up: batch states (9 MB at 4 rows of
# the 0.1B shape), whose sizes change with the batch.
MMAP_THRESHOLD_BYTES = 8 << 20


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold for this process. False where the C library has no mallopt (not glibc): nothing
    changes there."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
