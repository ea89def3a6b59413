"""Peak FLOP/s: datasheet lookup by device kind, and measured (cached) CPU peaks."""

import math
import types

import jax.numpy as jnp
import pytest

from llmos_jax.errors import UserError
from llmos_jax.monitoring import peak_flops


@pytest.fixture
def empty_cache():
    peak_flops.clear_measured_peak_cache()
    yield
    peak_flops.clear_measured_peak_cache()


@pytest.mark.parametrize(
    "device_kind, dtype, expected",
    [
        ("NVIDIA H100 80GB HBM3", jnp.bfloat16, 989e12),
        ("nvidia h100 pcie", jnp.bfloat16, 756e12),
        ("NVIDIA H200", jnp.bfloat16, 989e12),
        ("NVIDIA H200", jnp.float32, 495e12),
        ("NVIDIA A100-SXM4-40GB", jnp.bfloat16, 312e12),
        ("NVIDIA A100-SXM4-80GB", jnp.float16, 312e12),
        ("TPU v4", jnp.bfloat16, 275e12),
        ("TPU v5 lite", jnp.bfloat16, 197e12),
        ("tpu v5e", jnp.bfloat16, 197e12),
        ("TPU v5", jnp.bfloat16, 459e12),
        ("TPU v5p", jnp.bfloat16, 459e12),
        ("TPU v6 lite", jnp.bfloat16, 918e12),
    ],
)
def test_published_peak_by_device_kind(device_kind, dtype, expected):
    value, source = peak_flops.published_peak(device_kind, dtype)
    assert value == expected
    assert f"'{device_kind}'" in source


def test_published_source_names_dtype_and_device():
    _, source = peak_flops.published_peak("NVIDIA H100 80GB HBM3", "bfloat16")
    assert source == (
        "published bf16 dense peak for NVIDIA H100 SXM (device kind 'NVIDIA H100 80GB HBM3')"
    )


@pytest.mark.parametrize(
    "device_kind, dtype",
    [("TPU v4 lite", jnp.bfloat16), ("TPU v4", jnp.float32), ("Acme NPU", jnp.bfloat16)],
)
def test_unpublished_combinations_are_unknown(device_kind, dtype):
    assert peak_flops.published_peak(device_kind, dtype) is None


def test_known_accelerator_uses_table_without_measuring(monkeypatch, empty_cache):
    monkeypatch.setattr(peak_flops, "measure_matmul_peak", pytest.fail)
    device = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H200")
    value, source = peak_flops.peak_flops_per_device(jnp.bfloat16, device=device)
    assert value == 989e12
    assert source.startswith("published bf16 dense peak for NVIDIA H200")


def test_unknown_accelerator_without_measuring_is_a_user_error():
    device = types.SimpleNamespace(platform="tpu", device_kind="TPU v9 mega")
    with pytest.raises(UserError, match="TPU v9 mega"):
        peak_flops.peak_flops_per_device(jnp.bfloat16, measure_if_unknown=False, device=device)


def test_cpu_is_measured_and_cached_per_kind_dtype_size(monkeypatch, empty_cache):
    calls = []

    def fake_measure(dtype, size, repeats=10, *, device=None):
        calls.append((jnp.dtype(dtype).name, size))
        return 123.0

    monkeypatch.setattr(peak_flops, "measure_matmul_peak", fake_measure)
    first = peak_flops.peak_flops_per_device(jnp.float32, measure_if_unknown=False)
    second = peak_flops.peak_flops_per_device(jnp.float32)
    other_dtype = peak_flops.peak_flops_per_device(jnp.bfloat16)
    assert first == second == (123.0, "measured fp32 matmul peak on cpu (1024^2, median of 10)")
    assert other_dtype[1] == "measured bf16 matmul peak on cpu (1024^2, median of 10)"
    assert calls == [("float32", 1024), ("bfloat16", 1024)]


def test_real_cpu_measurement_is_positive_and_finite(empty_cache):
    value = peak_flops.measure_matmul_peak(jnp.float32, size=128, repeats=3)
    assert value > 0 and math.isfinite(value)
    cached, _ = peak_flops.peak_flops_per_device(jnp.float32)
    assert cached > 0 and math.isfinite(cached)
    assert peak_flops.peak_flops_per_device(jnp.float32)[0] == cached


def test_measuring_an_integer_dtype_is_a_user_error():
    with pytest.raises(UserError, match="int32"):
        peak_flops.measure_matmul_peak(jnp.int32, size=8, repeats=1)
