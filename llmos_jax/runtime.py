"""Process-level settings that make XLA:CPU training fast; call before JAX starts computing.

XLA:CPU allocates each step's temporaries as one block (tens of MB for a tiny
model, GBs for a larger one) and frees it when the step ends. glibc's malloc
serves blocks that large with a fresh `mmap` (the dynamic mmap threshold stops
at 32 MiB) or, on XLA's worker threads, from a per-thread arena that falls back
to `mmap` above 64 MiB, and returns them to the kernel on `free`. Every step
then page-faults its whole working set back in: measured on a 2-core VM, 12k
faults and ~30 ms of kernel time per step for a 0.8M-parameter GPT at batch
12 x 64 (about 40% of the step), 370k faults and ~0.6 s for a 10.6M one at
16 x 256. PyTorch does not pay this: its tensors are separate, smaller blocks
that malloc recycles. See docs/performance.md.

`configure_host_allocator()` tells glibc to keep freed memory for reuse (no
`mmap` for large blocks, no trimming, one arena), which removes those faults.
It is process-wide and only fully effective before XLA's threads first
allocate, so entry points call `configure_host_runtime()` before JAX
initialises its CPU backend; `jit_train_step` calls it again as a safety net.
The cost is that freed memory stays in the process (its resident size stays
at its peak), which is what a training process wants anyway.

Set `LLMOS_HOST_ALLOCATOR=system` to leave malloc alone.

With one arena there is a second cost: compiling the small train step leaves
some 17,000 free chunks (mostly 1-64 KiB) between the blocks the compiler
keeps, and every later malloc of XLA:CPU's worker threads searches
them under the arena's lock (glibc keeps chunks of that size in best-fit lists
sorted by size). A process that compiled its train step ran it 10% slower than
one that loaded it from the compilation cache. `retire_heap_fragments()`
takes those chunks out of malloc's lists for good and gives their pages back;
`CompileWatch` tells a loop when a compile may have left new ones.

`configure_compilation_cache()` keeps compiled programs on disk between runs
(`LLMOS_COMPILATION_CACHE=off` to turn it off; see `compilation_cache_dir`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import re
import time
from dataclasses import dataclass

log = logging.getLogger("llmos_jax.runtime")

# mallopt parameters (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# mallopt takes an int, glibc stores the trim threshold as a size_t: -1 becomes
# SIZE_MAX, "never trim". INT_MAX (2 GiB) is not enough: a step whose temporaries
# are 1.25 GiB can leave more than 2 GiB free at the heap's top (docs/performance.md).
_NEVER_TRIM = -1

_ENV_ALLOCATOR = "LLMOS_HOST_ALLOCATOR"
_ENV_COMPILATION_CACHE = "LLMOS_COMPILATION_CACHE"
_state = {"allocator": None}


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def configure_host_allocator() -> bool:
    """Makes glibc malloc recycle XLA:CPU's large per-step buffers; True if applied.

    Idempotent and cheap. Does nothing (returns False) off glibc, or when the
    environment variable `LLMOS_HOST_ALLOCATOR=system`.
    """
    if _state["allocator"] is not None:
        return _state["allocator"]
    applied = False
    if os.environ.get(_ENV_ALLOCATOR, "").lower() not in ("system", "default", "0", "off"):
        libc = _glibc()
        if libc is not None:
            # Large blocks come from the heap, not fresh mmaps; freed heap memory
            # is never returned to the kernel (trimming); and every
            # thread shares the main arena (per-thread arenas mmap blocks > 64 MiB).
            applied = all(libc.mallopt(parameter, value) == 1 for parameter, value in (
                (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM), (_M_ARENA_MAX, 1)))
            log.debug("glibc malloc tuned for XLA:CPU buffer reuse: %s", applied)
    _state["allocator"] = applied
    return applied


def _brk_heap() -> tuple[int, int] | None:
    """(start, end) address of the process's brk heap, glibc's main arena; None without one."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("[heap]"):
                    start, end = (int(x, 16) for x in line.split()[0].split("-"))
                    return start, end
    except OSError:
        pass
    return None


def heap_mib() -> int:
    """Size of the process's brk heap in MiB (0 without one, or off Linux).

    With `configure_host_allocator` applied, XLA:CPU's per-step temporaries live
    there, so a heap that keeps growing means steps that fault fresh pages in.
    """
    heap = _brk_heap()
    return 0 if heap is None else (heap[1] - heap[0]) >> 20


_MADV_DONTNEED = 4
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# malloc_info's <size|unsorted from=".." to=".." total=".." count=".."/> rows of one arena.
_FREE_ROW = re.compile(
    r'<(?:size|unsorted) from="(\d+)" to="(\d+)" total="(\d+)" count="(\d+)"/>')
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@dataclass(frozen=True)
class RetiredFragments:
    """What `retire_heap_fragments` did.

    Attributes:
      chunks: Blocks allocated and kept for good.
      released_mib: Whole pages inside them handed back to the kernel.
      left: Free chunks under the size limit still in the main arena afterwards
        (a step running meanwhile frees some of its own).
      rounds: Passes over malloc's lists (taking a chunk can split a larger one).
      seconds: Wall time taken.
    """

    chunks: int
    released_mib: float
    left: int
    rounds: int
    seconds: float


@functools.cache
def _heap_libc() -> ctypes.CDLL | None:
    """glibc with the signatures of the calls below, or None off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.malloc_usable_size.restype = ctypes.c_size_t
        libc.malloc_usable_size.argtypes = [ctypes.c_void_p]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.open_memstream.restype = ctypes.c_void_p
    return libc


def _main_arena_free_rows(libc: ctypes.CDLL,
                          max_chunk_bytes: int) -> list[tuple[int, int, int]]:
    """(chunk size to ask for, count, bytes) of each main-arena free list under the limit."""
    buffer, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    if not stream:
        return []
    try:
        libc.malloc_info(0, ctypes.c_void_p(stream))
    finally:
        libc.fclose(ctypes.c_void_p(stream))
    try:
        xml = ctypes.string_at(buffer, size.value).decode()
    finally:
        libc.free(buffer)
    main = xml.split('<heap nr="0">', 1)[-1].split("</heap>", 1)[0]
    rows = []
    for lo, hi, total, count in _FREE_ROW.findall(main):
        lo, hi, total, count = int(lo), int(hi), int(total), int(count)
        if not count or hi >= max_chunk_bytes:
            continue
        # Fast bins print (size - 15, size); the other lists (and the unsorted
        # one) their smallest and largest chunk, some with the "previous in use" bit.
        rows.append((hi if hi - lo == 15 else lo & ~15, count, total))
    return rows


def free_chunk_count(max_chunk_bytes: int = 1 << 20) -> int:
    """Free chunks smaller than `max_chunk_bytes` in glibc's main arena (0 off glibc)."""
    libc = _heap_libc()
    return 0 if libc is None else sum(
        count for _, count, _ in _main_arena_free_rows(libc, max_chunk_bytes))


def retire_heap_fragments(max_chunk_bytes: int = 1 << 20,
                          max_rounds: int = 8) -> RetiredFragments | None:
    """Allocates, once and for good, the free main-arena chunks under `max_chunk_bytes`.

    Call it between steps after XLA compiled something (see `CompileWatch`).
    Later mallocs then no longer search the compiler's leftover free chunks:
    a first run of the 2,000-step Shakespeare job went from 104.3 to 93.7 s
    (in-loop median step 47.7 to 40.5 ms; docs/performance.md).
    The whole pages inside each retired chunk go back to the kernel
    (`madvise`), so resident memory drops; only address space stays taken
    (at most twice the retired chunks' size). Larger free chunks (a step's
    temporaries, reused every step) are left alone; a step's own small
    chunks are simply allocated afresh on its next run.

    Taking a chunk can split a larger one, whose remainder shows up in the
    next round: rounds repeat until under 1% of the chunks are left, at most
    `max_rounds` (measured: 4 rounds, ~31,000 blocks and 0.1 s for ~17,000
    fragments).

    Returns None (and does nothing) unless `configure_host_allocator` tuned
    glibc, or when this thread's mallocs do not come from the main arena
    (the allocator was tuned after threads had their own arenas).
    """
    libc = _heap_libc() if _state["allocator"] else None
    heap = _brk_heap()
    if libc is None or heap is None:
        return None
    started = time.perf_counter()
    probe = libc.malloc(64)
    in_main_arena = probe is not None and heap[0] <= probe < heap[1]
    libc.free(probe)
    if not in_main_arena:
        return None
    rows = _main_arena_free_rows(libc, max_chunk_bytes)
    budget = 2 * sum(total for _, _, total in rows)  # bytes: splits cost at most as much again
    first_count = left = sum(count for _, count, _ in rows)
    chunks, released, taken, rounds = 0, 0, 0, 0
    while rows and rounds < max_rounds and taken < budget:
        rounds += 1
        for chunk_size, count, _ in rows:
            request = max(chunk_size - 8, 1)  # malloc adds its 8-byte header
            for _ in range(count):
                block = libc.malloc(request)
                if not block:
                    break
                chunks += 1
                taken += chunk_size
                start = -(-block // _PAGE) * _PAGE
                end = (block + libc.malloc_usable_size(block)) // _PAGE * _PAGE
                if end > start:
                    libc.madvise(start, end - start, _MADV_DONTNEED)
                    released += end - start
        rows = _main_arena_free_rows(libc, max_chunk_bytes)
        left = sum(count for _, count, _ in rows)
        if left <= max(64, first_count // 100):  # the rest is a running step's churn
            break
    report = RetiredFragments(chunks, released / 2**20, left, rounds,
                              time.perf_counter() - started)
    log.debug("retired heap fragments: %s", report)
    return report


class CompileWatch:
    """Notices XLA compilations (and compilation-cache loads) between two questions.

    A training loop asks `compiled_since_last()` between steps and calls
    `retire_heap_fragments()` when it says yes; `close()` stops listening.
    """

    def __init__(self) -> None:
        from jax import monitoring

        self._monitoring = monitoring
        self._compiles = 0  # only ever incremented (from any thread)
        self._seen = 0
        monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_: object) -> None:
        if event == _BACKEND_COMPILE_EVENT:
            self._compiles += 1

    def compiled_since_last(self) -> bool:
        """True when something compiled (or loaded) since the previous call."""
        compiles = self._compiles
        seen, self._seen = self._seen, compiles
        return compiles != seen

    def close(self) -> None:
        """Stops listening; idempotent."""
        try:
            self._monitoring.unregister_event_duration_listener(self._on_event)
        except (AssertionError, ValueError):  # already unregistered
            pass


def compilation_cache_dir() -> str | None:
    """Where compiled XLA programs are kept between runs (None: not kept).

    `JAX_COMPILATION_CACHE_DIR` when set (JAX reads it itself); else
    `LLMOS_COMPILATION_CACHE` (a folder, or `off`); else
    `$XDG_CACHE_HOME/llmos_jax/xla` (`~/.cache/llmos_jax/xla`).
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    setting = os.environ.get(_ENV_COMPILATION_CACHE, "")
    if setting.lower() in ("off", "0", "false", "none"):
        return None
    if setting:
        return os.path.abspath(os.path.expanduser(setting))
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache_home, "llmos_jax", "xla")


def configure_compilation_cache() -> str | None:
    """Keeps compiled XLA programs on disk, so a repeated run skips compiling them.

    Compiling the train step, the eval step and the initialiser of even a
    0.8M-parameter model takes seconds to tens of seconds on a 2-core CPU
    (docs/performance.md); a second run of the same configuration loads them
    instead. JAX keys each entry by the program, the compiler flags and the
    devices, so a changed model or flag compiles afresh. Programs that compile
    in under a second are not kept. Returns the folder used (None: off).
    """
    directory = compilation_cache_dir()
    if directory is None or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return directory
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", directory)
    return jax.config.jax_compilation_cache_dir


def configure_host_runtime() -> None:
    """Everything llmos_jax sets up per process for fast host (CPU) execution.

    Call it first thing in a training entry point, before JAX runs anything.
    Harmless on GPU/TPU hosts.
    """
    configure_host_allocator()
    configure_compilation_cache()
