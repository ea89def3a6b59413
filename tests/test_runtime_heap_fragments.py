"""Free chunks left by a compiler are retired for good; the loop does it after a compile."""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp

from llmos_jax import runtime

# A fresh process: malloc settings are per process. Like XLA's compiler, it leaves
# thousands of free 1-32 KiB chunks between 64-byte blocks that stay in use.
PROBE = textwrap.dedent("""
    import ctypes, json, os, random, sys
    from llmos_jax import runtime

    tuned = runtime.configure_host_allocator() if sys.argv[1] == "tuned" else False
    libc = runtime._heap_libc()
    page = os.sysconf("SC_PAGE_SIZE")
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page / 2**20
    random.seed(0)
    kept, freed = [], []
    for i in range(12000):
        size = random.randint(1024, 32 * 1024)
        block = libc.malloc(size)
        ctypes.memset(block, 7, size)  # resident, as the compiler's were
        freed.append(block)
        kept.append(libc.malloc(64))
        ctypes.memset(kept[-1], i % 251, 64)
    for block in freed:
        libc.free(block)
    before, rss_before = runtime.free_chunk_count(), rss()
    report = runtime.retire_heap_fragments()
    intact = all(ctypes.string_at(block, 64) == bytes([i % 251]) * 64
                 for i, block in enumerate(kept))
    # malloc still works as usual afterwards.
    again = [libc.malloc(4096) for _ in range(100)]
    for block in again:
        libc.free(block)
    print(json.dumps({"tuned": tuned, "before": before, "rss_before": rss_before,
                      "rss_after": rss(), "report": report and report.__dict__,
                      "left": runtime.free_chunk_count(), "intact": intact}))
""")


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_fragments_are_taken_out_of_malloc_and_their_pages_released():
    result = _probe("tuned")
    assert result["tuned"]
    assert result["before"] >= 10000  # the fragments are really there ...
    assert result["report"]["chunks"] >= result["before"]
    assert result["left"] <= result["before"] // 100  # ... and gone from malloc's lists
    # 12,000 fragments of 16 KiB on average: most of their ~190 MiB goes back to the kernel.
    assert result["rss_before"] - result["rss_after"] >= 100, result
    assert result["intact"], "a block still in use was touched"


def test_nothing_is_retired_unless_the_allocator_was_tuned():
    result = _probe("system")
    assert not result["tuned"]
    assert result["report"] is None
    assert result["before"] >= 10000
    assert result["left"] >= result["before"] - 100  # still in malloc's lists


def test_compile_watch_sees_a_compile_and_not_a_cached_call():
    inputs = jnp.ones(5).block_until_ready()  # made (and compiled) before watching
    add_three = jax.jit(lambda x: x * 3.0 + 17.0)
    watch = runtime.CompileWatch()
    try:
        assert not watch.compiled_since_last()
        add_three(inputs).block_until_ready()
        assert watch.compiled_since_last()
        add_three(inputs).block_until_ready()  # already compiled
        assert not watch.compiled_since_last()
    finally:
        watch.close()
    jax.jit(lambda x: x - 11.0)(inputs).block_until_ready()
    assert not watch.compiled_since_last()  # closed: no longer listening
