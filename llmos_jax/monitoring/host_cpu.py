"""What CPU a measurement ran on: model, core count and the matmul-relevant flags.

A CPU speed figure means little without the machine: the same benchmark gave
llmos_jax 1.15x over PyTorch on one AMD EPYC and 0.85x on another with half the
float32 matmul peak (docs/performance.md). Every benchmark that records a speed
prints this description next to it, with a peak from `peak_flops`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
import re

# Instruction sets that decide which matmul kernels XLA:CPU, YNNPACK and
# PyTorch's BLAS can use: AVX-512 (and its bf16 / VNNI extensions), AMX tiles.
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile",
                     "amx_bf16", "amx_int8")


@dataclasses.dataclass(frozen=True)
class HostCpu:
    """A CPU as /proc/cpuinfo describes it."""

    model: str
    cpus: int
    flags: tuple[str, ...]  # the FLAGS_OF_INTEREST present, in that order

    def summary(self) -> str:
        """One line: `AMD EPYC, 2 CPUs, flags avx2 fma avx512f ...`."""
        return f"{self.model}, {self.cpus} CPUs, flags {' '.join(self.flags) or 'none of interest'}"

    def as_dict(self) -> dict:
        return {"model": self.model, "cpus": self.cpus, "flags": list(self.flags)}


def describe_cpu(cpuinfo: str | None = None) -> HostCpu:
    """This machine's CPU, or the one `cpuinfo` (the text of /proc/cpuinfo) describes.

    Off Linux (no /proc/cpuinfo) the model is `platform.processor()` and no flags
    are known.
    """
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    model = found.group(1).strip() if found else (platform.processor() or "unknown")
    found = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    present = set(found.group(1).split()) if found else set()
    processors = len(re.findall(r"^processor\s*:", cpuinfo, re.M))
    return HostCpu(model=model, cpus=processors or os.cpu_count() or 1,
                   flags=tuple(flag for flag in FLAGS_OF_INTEREST if flag in present))
