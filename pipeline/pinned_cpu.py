"""The environment that makes the image-type network's CPU arithmetic the same on every x86-64 machine with AVX2.

Set by every `ham` process at start (and by the tests), before torch runs an operation: ATen reads its capability,
and MKL its reproducibility mode, at their first use. `filter_model.pin_cpu_numerics` adds the switches torch sets
at run time and checks that the pin took. No torch import here, so setting it costs nothing.
"""
import os

# ATen's own kernels pinned to their AVX2 build, MKL's GEMM to its COMPATIBLE code path (the same on Intel and AMD).
PINNED_CPU_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}


def pin_environment() -> None:
    os.environ.update(PINNED_CPU_ENVIRONMENT)
