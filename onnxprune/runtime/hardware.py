"""What the hardware here prefers, for the ``--round-to auto`` default.

ONNX Runtime's CPU convolutions (MLAS NCHWc) work on blocks of 16 channels with AVX-512 and
8 with AVX2; counts off the block take slower paths or are padded (field notes §1, and
``benchmarks/RESULTS.md``: 16 was fastest on this project's AVX-512 machine). NVIDIA's tensor
cores want multiples of 8 in fp16.
"""

from __future__ import annotations

import platform

from .device_timer import cpu_model

__all__ = ["cpu_flags", "cpu_model", "round_to_for"]


def cpu_flags() -> set[str]:
    """The instruction-set flags the CPU reports (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def round_to_for(provider: str = "cpu", flags: set[str] | None = None) -> int:
    """The channel multiple the provider runs fastest on: 16 on AVX-512 CPUs, 8 on other x86
    CPUs and for CUDA (fp16 tensor cores), 8 elsewhere."""
    if provider == "cuda":
        return 8
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags and platform.machine().lower() in ("x86_64", "amd64", ""):
        return 16
    return 8
