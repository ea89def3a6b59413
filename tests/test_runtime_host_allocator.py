"""`configure_host_allocator` keeps freed heap memory, however large, for the next step."""

import subprocess
import sys
import textwrap

# A fresh process: malloc settings are per process and the test runner's own heap
# is none of this test's business.
PROBE = textwrap.dedent("""
    import ctypes, sys
    from llmos_jax.runtime import configure_host_allocator, heap_mib

    tuned = configure_host_allocator() if sys.argv[1] == "tuned" else False
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # Like XLA:CPU's temporaries of a large step: one 2.5 GiB block per execution.
    # Untouched, so only address space is taken.
    block = libc.malloc(5 << 29)
    grown = heap_mib()
    libc.free(block)
    print(tuned, grown, heap_mib())
""")


def _heap_after_free(mode: str) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True,
                         text=True).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


def test_a_freed_block_over_2_gib_stays_in_the_heap():
    tuned, grown, after_free = _heap_after_free("tuned")
    assert tuned
    assert grown >= 2560  # the block came from the heap (brk), not from mmap
    assert after_free >= 2560, "glibc trimmed the heap: the next step would fault every page"


def test_without_tuning_glibc_maps_the_block_and_returns_it():
    tuned, grown, after_free = _heap_after_free("system")
    assert not tuned
    assert grown < 2560 and after_free < 2560  # mmap'd and unmapped: fresh pages each time
