"""The peak FLOP/s that MFU divides by, and where that number came from.

MFU is only meaningful next to its denominator, so every peak is returned with
a human-readable source: a published dense (no sparsity) datasheet figure for
known accelerators, or a timed matmul for everything else (CPU always).

Published ``fp32`` figures are for JAX's default matmul precision, which runs
float32 matmuls on NVIDIA tensor cores as TF32. TPUs publish no float32 peak, so
float32 on TPU is measured.
"""

import dataclasses
import re
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

from llmos_jax.errors import UserError

MEASURE_SIZE = 1024
MEASURE_REPEATS = 10

_DTYPE_SHORT_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclasses.dataclass(frozen=True)
class PublishedPeak:
    """A device's datasheet dense peaks, keyed by short dtype name."""

    name: str
    device_kind_pattern: str  # regex, searched case-insensitively in device_kind
    flops_per_second: dict[str, float]


# Ordered: the first matching pattern wins, so specific variants come first.
PUBLISHED_PEAKS: tuple[PublishedPeak, ...] = (
    PublishedPeak("NVIDIA H100 PCIe", r"\bh100\b.*\bpcie\b",
                  {"bf16": 756e12, "fp16": 756e12, "fp32": 378e12}),
    PublishedPeak("NVIDIA H100 SXM", r"\bh100\b",
                  {"bf16": 989e12, "fp16": 989e12, "fp32": 495e12}),
    PublishedPeak("NVIDIA H200", r"\bh200\b",
                  {"bf16": 989e12, "fp16": 989e12, "fp32": 495e12}),
    PublishedPeak("NVIDIA A100", r"\ba100\b",
                  {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12}),
    PublishedPeak("TPU v4", r"^tpu v4$", {"bf16": 275e12}),
    PublishedPeak("TPU v5e", r"^tpu v5 ?(lite|e)$", {"bf16": 197e12}),
    PublishedPeak("TPU v5p", r"^tpu v5p?$", {"bf16": 459e12}),
    PublishedPeak("TPU v6e", r"^tpu v6 ?(lite|e)$", {"bf16": 918e12}),
)


def dtype_short_name(dtype: Any) -> str:
    """``bf16``/``fp16``/``fp32`` for the floating dtypes, else numpy's name."""
    name = jnp.dtype(dtype).name
    return _DTYPE_SHORT_NAMES.get(name, name)


def published_peak(device_kind: str, dtype: Any) -> tuple[float, str] | None:
    """The datasheet peak for ``device_kind`` and ``dtype``, with its source, if known."""
    kind = device_kind.strip().lower()
    short = dtype_short_name(dtype)
    for entry in PUBLISHED_PEAKS:
        if re.search(entry.device_kind_pattern, kind):
            if short not in entry.flops_per_second:
                return None
            precision = " (TF32 tensor cores)" if short == "fp32" else ""
            source = (
                f"published {short}{precision} dense peak for {entry.name} "
                f"(device kind '{device_kind}')"
            )
            return entry.flops_per_second[short], source
    return None


def measure_matmul_peak(
    dtype: Any = jnp.float32,
    size: int = MEASURE_SIZE,
    repeats: int = MEASURE_REPEATS,
    *,
    device: jax.Device | None = None,
) -> float:
    """Times a jit-compiled ``size x size`` matmul and returns FLOP/s on one device.

    Runs on ``device`` (default: the first device), after a warm-up call that
    also compiles; returns ``2*size**3`` over the median of ``repeats`` timed
    calls. Simulated CPU devices share the host's cores, so on CPU this is the
    whole host's rate, not a per-core figure.
    """
    if size <= 0 or repeats <= 0:
        raise UserError(f"matmul peak: size={size} and repeats={repeats} must be positive.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise UserError(f"matmul peak: dtype {jnp.dtype(dtype).name} is not a floating dtype.")
    if device is None:
        device = jax.devices()[0]
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(key_a, (size, size), dtype), device)
    b = jax.device_put(jax.random.normal(key_b, (size, size), dtype), device)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(seconds)


# Documented in-process cache of measurements, keyed by (device kind, dtype name, size).
_MEASURED_PEAKS: dict[tuple[str, str, int], float] = {}


def clear_measured_peak_cache() -> None:
    """Forget cached measurements (e.g. after changing XLA flags)."""
    _MEASURED_PEAKS.clear()


def peak_flops_per_device(
    dtype: Any,
    *,
    measure_if_unknown: bool = True,
    device: jax.Device | None = None,
) -> tuple[float, str]:
    """Peak FLOP/s of one device for ``dtype`` matmuls, and a sentence saying where it came from.

    Known accelerators use the published dense peak; CPUs and unknown devices
    are measured with :func:`measure_matmul_peak` (cached per device kind,
    dtype and size for the life of the process).

    Args:
        dtype: the compute dtype of the model's matmuls.
        measure_if_unknown: time a matmul when no published peak is known;
            CPUs are always measured.
        device: the device to describe; default the first device.

    Raises:
        UserError: no published peak is known and measuring is not allowed.
    """
    if device is None:
        device = jax.devices()[0]
    short = dtype_short_name(dtype)
    if device.platform != "cpu":
        known = published_peak(device.device_kind, dtype)
        if known is not None:
            return known
        if not measure_if_unknown:
            raise UserError(
                f"No published {short} peak FLOP/s for device kind '{device.device_kind}'; "
                "allow measuring (measure_if_unknown=True) or add the device to "
                "llmos_jax.monitoring.peak_flops.PUBLISHED_PEAKS."
            )
    cache_key = (device.device_kind, jnp.dtype(dtype).name, MEASURE_SIZE)
    if cache_key not in _MEASURED_PEAKS:
        _MEASURED_PEAKS[cache_key] = measure_matmul_peak(dtype, MEASURE_SIZE, device=device)
    value = _MEASURED_PEAKS[cache_key]
    source = (
        f"measured {short} matmul peak on {device.device_kind} "
        f"({MEASURE_SIZE}^2, median of {MEASURE_REPEATS})"
    )
    return value, source
