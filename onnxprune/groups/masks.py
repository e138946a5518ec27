"""Which entries of a constant a plan keeps: per-axis keep vectors for slicing, and the zeroed
slices of the masked original. Both read only the plan (removed atoms) and the constants'
declared uses, so criteria that mask (distortion) and the rewrite share them."""

from __future__ import annotations

import numpy as np

from ..errors import OnnxPruneError


class RewriteError(OnnxPruneError):
    """The plan cannot be applied consistently; nothing is written."""


def project(keep: np.ndarray) -> list[np.ndarray]:
    """Per-axis keep vectors of a rectangular keep grid (error if it is not rectangular)."""
    vectors = [keep.any(axis=tuple(o for o in range(keep.ndim) if o != k)) for k in range(keep.ndim)]
    outer = vectors[0]
    for v in vectors[1:]:
        outer = np.multiply.outer(outer, v)
    if not np.array_equal(outer.reshape(keep.shape), keep):
        raise RewriteError("kept channels do not form a rectangular grid")
    return vectors


def masked_value(value, uses, removed_atom):
    """``value`` with the slices that consuming ``uses`` read from removed atoms zeroed (the
    masked original; the distortion criterion feeds the same arrays), or None."""
    keep = kept_mask(value, uses, removed_atom)
    if keep is None:
        return None
    return np.where(keep, value, np.zeros((), dtype=value.dtype))


def kept_mask(value, uses, removed_atom) -> np.ndarray | None:
    """Where ``value`` stays in the masked original: False on the slices that consuming
    ``uses`` read from removed atoms; None when nothing is masked."""
    pieces = kept_pieces(value, uses, removed_atom)
    return None if pieces is None else all_of(pieces, value.shape)


def all_of(pieces: list[np.ndarray], shape) -> np.ndarray:
    """The AND of broadcastable boolean ``pieces``, as one array of ``shape``."""
    mask = np.ones(shape, dtype=bool)
    for piece in pieces:
        mask &= piece
    return mask


def kept_pieces(value, uses, removed_atom) -> list[np.ndarray] | None:
    """``kept_mask`` as the small boolean arrays whose broadcast AND it is (one per consuming
    use, sized only along that use's axes, so a weight masked on both axes costs two vectors,
    not a copy of its shape); None when nothing is masked."""
    pieces = []
    for use in uses:
        if not use.consume:
            continue
        keep = ~removed_atom[use.labels]
        order = sorted(use.axes)
        label_axes = [use.axes[a] for a in order]
        unmapped = tuple(k for k in range(keep.ndim) if k not in label_axes)
        if unmapped:
            keep = keep.any(axis=unmapped)
            label_axes = [k - sum(1 for u in unmapped if u < k) for k in label_axes]
        keep = np.transpose(keep, np.argsort(np.argsort(label_axes)))
        shape = [value.shape[a] if a in use.axes else 1 for a in range(value.ndim)]
        if not keep.all():
            pieces.append(keep.reshape(shape))
    return pieces or None
