"""serve/process_memory.py: with the mmap threshold fixed, a large block is mapped on its own even after a larger
one was freed (glibc's default would have raised its threshold and taken the block from the heap)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent(
    """
    import ctypes, sys
    from rwkv_edge.serve.process_memory import MMAP_THRESHOLD_BYTES, fix_mmap_threshold

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "fixed":
        assert fix_mmap_threshold()
    big = bytearray(3 * MMAP_THRESHOLD_BYTES)  # mapped: above any threshold
    del big  # freeing it raises glibc's default threshold to its size
    before = libc.mallinfo2().hblkhd
    block = bytearray(MMAP_THRESHOLD_BYTES + (1 << 20))
    print(libc.mallinfo2().hblkhd - before >= len(block))
    """
)


def mapped_on_its_own(mode: str) -> bool:
    out = subprocess.run([sys.executable, "-c", CHECK, mode], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_fixed_threshold_maps_large_blocks_on_their_own():
    try:
        default = mapped_on_its_own("default")
    except subprocess.CalledProcessError as e:
        if "mallinfo2" in e.stderr:
            pytest.skip("this C library has no mallinfo2 (glibc < 2.33 or not glibc)")
        raise
    assert not default  # the case the fix is for: glibc's own threshold moved up
    assert mapped_on_its_own("fixed")
