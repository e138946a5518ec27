"""Procedural natural-looking images for calibration without data: dead leaves.

Gaussian noise has none of the statistics of photographs: no flat regions, no edges, a flat
spectrum. A dead-leaves image (discs of random colours dropped on top of one another, radii
from a power law, Lee, Mumford and Huang 2001) has the 1/f spectrum, the occlusions and the
piecewise-flat regions of natural images, and models trained on it learn features close to
those learnt on photos (Baradad et al., "Learning to See by Looking at Noise", 2021). Images
are in [0, 1], NCHW; ``--preprocess`` mean/std normalize them as they would a photo.
"""

from __future__ import annotations

import numpy as np

MIN_RADIUS = 0.02      # of the image's shorter side
MAX_RADIUS = 0.5
COVERED = 0.995        # stop dropping discs once this share of pixels is covered
MAX_DISCS = 4000


def dead_leaves(count: int, channels: int, height: int, width: int,
                rng: np.random.Generator) -> np.ndarray:
    """``count`` dead-leaves images [count, channels, height, width] in [0, 1]."""
    return np.stack([_one(channels, height, width, rng) for _ in range(count)]).astype(
        np.float32)


def _one(channels: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    side = min(height, width)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.zeros((channels, height, width))
    free = np.ones((height, width), dtype=bool)
    for _ in range(MAX_DISCS):
        radius = _power_law_radius(rng) * side
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        disc = free & ((ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2)
        colour = rng.uniform(0.0, 1.0, channels) if channels != 3 else _colour(rng)
        image[:, disc] = colour[:, None]
        free &= ~disc
        if free.mean() <= 1 - COVERED:
            break
    image[:, free] = rng.uniform(0.0, 1.0, (channels, 1))
    return image


def _power_law_radius(rng: np.random.Generator) -> float:
    """A radius with density ∝ r⁻³ between MIN_RADIUS and MAX_RADIUS (scale invariance)."""
    lo, hi = MIN_RADIUS ** -2, MAX_RADIUS ** -2
    return float((lo - rng.uniform() * (lo - hi)) ** -0.5)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """Correlated RGB, as in photos: a grey level with a smaller colour cast."""
    grey = rng.uniform()
    return np.clip(grey + rng.normal(0.0, 0.1, 3), 0.0, 1.0)
