"""What the hardware here prefers, for the ``--round-to auto`` default.

ONNX Runtime's CPU convolutions (MLAS NCHWc) work on blocks of channels; counts off the block
take slower paths or are padded (field notes §1). Measured (``benchmarks/RESULTS.md``,
"Choosing the ``--round-to`` default"): multiples of 16 were fastest on an AVX-512 machine and
on an AVX2 one alike, so x86 CPUs with either get 16. NVIDIA's tensor cores want multiples of 8
in fp16; other CPUs (unmeasured) get 8.
"""

from __future__ import annotations

import platform

from .device_timer import cpu_flags, cpu_model

__all__ = ["cpu_flags", "cpu_model", "round_to_for"]


def round_to_for(provider: str = "cpu", flags: set[str] | None = None) -> int:
    """The channel multiple the provider runs fastest on: 16 on x86 CPUs with AVX2 or
    AVX-512, 8 for CUDA (fp16 tensor cores) and on other CPUs."""
    if provider == "cuda":
        return 8
    flags = cpu_flags() if flags is None else flags
    if flags & {"avx2", "avx512f"} and platform.machine().lower() in ("x86_64", "amd64", ""):
        return 16
    return 8
