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

`configure_compilation_cache()` keeps compiled programs on disk between runs
(`LLMOS_COMPILATION_CACHE=off` to turn it off; see `compilation_cache_dir`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

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


def heap_mib() -> int:
    """Size of the process's brk heap in MiB (0 without one, or off Linux).

    With `configure_host_allocator` applied, XLA:CPU's per-step temporaries live
    there, so a heap that keeps growing means steps that fault fresh pages in.
    """
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("[heap]"):
                    start, end = (int(x, 16) for x in line.split()[0].split("-"))
                    return (end - start) >> 20
    except OSError:
        pass
    return 0


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
