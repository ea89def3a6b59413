"""The CPU description every speed benchmark prints beside its figures."""

import os

from llmos_jax.monitoring.host_cpu import FLAGS_OF_INTEREST, describe_cpu

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile
"""


def test_model_processors_and_flags_of_interest_in_a_fixed_order():
    cpu = describe_cpu(CPUINFO)
    assert cpu.model == "AMD EPYC 9R14 96-Core Processor"
    assert cpu.cpus == 2
    # sse2 and fpu are not of interest; the order is FLAGS_OF_INTEREST's, not the file's.
    assert cpu.flags == ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
    assert cpu.summary() == ("AMD EPYC 9R14 96-Core Processor, 2 CPUs, flags avx2 fma avx512f "
                             "avx512_bf16 avx512_vnni amx_tile")
    assert cpu.as_dict()["flags"] == list(cpu.flags)


def test_no_cpuinfo_falls_back_without_flags():
    cpu = describe_cpu("")
    assert cpu.model
    assert cpu.cpus == (os.cpu_count() or 1)
    assert cpu.flags == ()
    assert cpu.summary().endswith("flags none of interest")


def test_this_machine():
    cpu = describe_cpu()
    assert cpu.cpus >= 1
    assert set(cpu.flags) <= set(FLAGS_OF_INTEREST)
    if os.path.exists("/proc/cpuinfo"):
        assert cpu.model != "unknown"
