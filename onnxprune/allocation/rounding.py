"""How many components a group loses at a time so that its kept channels stay a multiple of
``round_to``: shared by every allocation."""

from __future__ import annotations

from math import ceil, gcd


def component_step(size: int, width: int, round_to: int) -> int:
    """Components per step for a group of ``size`` components of ``width`` channels each. A
    group too small for the multiple (RegNet's grouped convs: 8 components of 6 channels,
    round_to 16 would need 8 at a time) is given half the multiple, and so on."""
    step = max(1, round_to // gcd(round_to, width))
    while step >= size and round_to > 1:
        round_to //= 2
        step = max(1, round_to // gcd(round_to, width))
    return step


def least_kept(size: int, width: int, round_to: int) -> int:
    """Fewest components a group may keep: a group of at least ``round_to`` channels keeps at
    least that many. ``round_to`` is the runtime's block (ONNX Runtime's NCHWc layout on x86:
    16 channels with AVX-512, 8 with AVX2), and a conv reading fewer channels than a block
    leaves the blocked kernels for a slow direct one behind a reorder: MobileNetV2's second
    expand conv at 224, 16 input channels cut to 8, ran in 615 µs against 708 µs dense for a
    quarter of the MACs. Smaller groups keep one step, as before."""
    step = component_step(size, width, round_to)
    if size * width < round_to:
        return min(size, step)
    return min(size, ceil(ceil(round_to / width) / step) * step)


GOLDEN = 0.6180339887498949   # 1/φ: consecutive multiples fill [0, 1) evenly


def spread_offset(index: int) -> float:
    """A rounding offset in [0, 1) for group ``index``: consecutive groups get offsets spread
    evenly over the interval (the golden-ratio sequence), so that with them as offsets,
    groups of one size lose their next step at different ratios instead of all at once."""
    return ((index + 1) * GOLDEN) % 1.0
