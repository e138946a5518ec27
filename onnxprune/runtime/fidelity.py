"""How far one model's outputs are from another's on the same inputs: errors, the cosine
similarity of each sample's output, and top-1 agreement where the outputs are class scores."""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def _rows(values: list[np.ndarray], sizes: list[int]) -> np.ndarray | None:
    """The per-batch outputs as one [samples, features] array, when every batch's output has
    its samples on axis 0; None otherwise (an output without a batch axis)."""
    if all(v.ndim >= 1 and v.shape[0] == n for v, n in zip(values, sizes)):
        return np.concatenate([v.reshape(v.shape[0], -1) for v in values]).astype(np.float64)
    return None


def output_fidelity(name: str, before: list[np.ndarray], after: list[np.ndarray],
                    sizes: list[int] | None = None) -> dict:
    """Max and mean absolute error over all elements; cosine similarity of each sample's
    flattened output (mean and min over samples; a batch's whole output counts as one sample
    when the output has no batch axis); top-1 agreement for [N, C ≥ 2] float scores.
    ``sizes``: the samples in each batch (default: each output's first dim)."""
    for x, y in zip(before, after):
        if x.shape != y.shape:
            raise UserError(f"output {name!r} has shape {list(x.shape)} in the original and "
                            f"{list(y.shape)} in the pruned model")
    diffs = np.concatenate([np.abs(x.astype(np.float64) - y.astype(np.float64)).ravel()
                            for x, y in zip(before, after)])
    sizes = sizes or [len(x) if x.ndim else 0 for x in before]
    rows_a, rows_b = _rows(before, sizes), _rows(after, sizes)
    batched = rows_a is not None
    if not batched:
        rows_a = np.stack([x.astype(np.float64).ravel() for x in before])
        rows_b = np.stack([y.astype(np.float64).ravel() for y in after])
    cos = cosine_rows(rows_a, rows_b)
    whole = np.concatenate(before) if batched else before[0]
    result = {"name": name, "shape": list(whole.shape), "dtype": str(whole.dtype),
              "max_abs_error": float(diffs.max(initial=0.0)),
              "mean_abs_error": float(diffs.mean()) if diffs.size else 0.0,
              "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
              "top1_agreement": None}
    if batched and is_scores(whole):
        result["top1_agreement"] = float(np.mean(
            np.argmax(whole, 1) == np.argmax(np.concatenate(after), 1)))
    return result


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows. Two zero rows count as identical (1); a zero row
    against a non-zero one as unrelated (0)."""
    dot = np.sum(a * b, axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    return np.clip(np.where(both_zero, 1.0, cos), -1.0, 1.0)


def is_scores(value: np.ndarray) -> bool:
    """Looks like classification scores: [N, C] floats with at least two classes."""
    return value.ndim == 2 and value.shape[1] >= 2 and np.issubdtype(value.dtype, np.floating)


PROBABILITY_SLACK = 1e-3     # rows of a probability output sum to 1 within this


def is_probabilities(value: np.ndarray) -> bool:
    """Non-negative rows (last axis) that sum to 1: a softmax's output, not logits."""
    return bool(value.ndim >= 1 and value.size and value.min() >= 0
                and np.allclose(value.sum(-1), 1.0, atol=PROBABILITY_SLACK))
