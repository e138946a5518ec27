"""Repair the layers that read removed channels, without training.

* ``bias`` (FLAP): the removed inputs' expected contribution, Σ_j W[:, j]·E[x_j], moves into
  the layer's bias, so its outputs keep their mean.
* ``obs``: the optimal brain surgeon update. With H = E[x xᵀ] over the layer's inputs (plus a
  constant 1 so that the bias is re-fit too), removing the set M and re-fitting the rest in the
  least-squares sense is ΔW = −W[:, M]·([H⁻¹]_MM)⁻¹·[H⁻¹]_M,: (IST-DASLab OBC). For a k×k conv
  H is over its input patches (C·k features, a channel removing its k). Layers whose H was not
  captured (too wide, grouped, 3-D kernels) get the bias update.

The correction is written into a copy of the *original* model (removed columns stay as they
are), so the pruned and the masked model are both derived from it and the oracle still holds.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import ModelGraph
from ..groups import Analysis
from .consumers import Consumer, find_consumers

METHODS = ("none", "bias", "obs")
MAX_OBS_FEATURES = 8192     # a bigger Gram matrix (flatten → Gemm) costs too much memory
MAX_PATCH_FEATURES = 2304   # C·kh·kw of a k×k conv whose patch Gram is kept (256 × 3×3)
DAMPING = 0.01              # λ·mean(diag H) added to the diagonal


def obs_inputs(analysis: Analysis) -> set[str]:
    """Tensors whose Gram matrix ``obs`` needs (inputs of pointwise consumers)."""
    return {c.input_name for c in find_consumers(analysis)
            if c.pointwise and c.weight.shape[1] <= MAX_OBS_FEATURES}


def obs_patches(analysis: Analysis) -> dict[str, list]:
    """{tensor: [(conv node, window)]} for the k×k convs whose patch Gram ``obs`` needs."""
    out: dict[str, list] = {}
    for c in find_consumers(analysis):
        if c.window is not None and c.weight.shape[1] * c.weight.shape[2] <= MAX_PATCH_FEATURES:
            out.setdefault(c.input_name, []).append((c.node, c.window))
    return out


def compensate(model: onnx.ModelProto, analysis: Analysis, removed_atom: np.ndarray, stats,
               method: str, damping: float = DAMPING) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with every consumer of removed channels re-fitted; notes say which
    layers were left as they are, and why. ``damping``: λ of the OBS update (a larger one
    keeps it closer to plain removal, which is safer when there are few calibration samples
    per input feature)."""
    if method not in METHODS:
        raise ValueError(method)
    if method == "none":
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = ModelGraph(out, infer_shapes=False)
    notes = []
    for c in find_consumers(analysis):
        removed = removed_atom[c.use.labels]
        if not removed.any() or removed.all():
            continue
        moments = stats.get(c.input_name) if stats is not None else None
        label = graph.nodes[c.node].label
        if moments is None or not moments.count:
            notes.append(f"{label}: no calibration statistics, not compensated")
            continue
        if c.bias is None:
            notes.append(f"{label}: no bias to absorb the correction, not compensated")
            continue
        node_index, input_index, _ = c.bias
        if (graph.quantized_source(graph.nodes[c.node].input(1)) is not None or
                graph.quantized_source(graph.nodes[node_index].input(input_index)) is not None):
            notes.append(f"{label}: weights stored quantized, not compensated (a correction "
                         f"would not survive rounding to the stored integers)")
            continue
        gram = input_gram(c, moments)
        if method == "obs" and gram is not None:
            delta_w, delta_b = _obs(c, removed, moments, *gram, damping=damping)
        else:
            if method == "obs":
                notes.append(f"{label}: not pointwise (or too wide), bias compensation instead")
            delta_w, delta_b = np.zeros_like(c.weight), _bias(c, removed, moments)
        if delta_w.any():
            graph.set_const(graph.nodes[c.node], 1, c.write(c.weight + delta_w))
        node_index, input_index, sign = c.bias
        owner = graph.nodes[node_index]
        value = graph.const(owner.input(input_index))
        graph.set_const(owner, input_index,
                        (value + sign * delta_b.reshape(value.shape)).astype(value.dtype))
    return out, notes


def _bias(c: Consumer, removed: np.ndarray, moments) -> np.ndarray:
    """Σ_{j removed} Σ_k W[:, j, k]·E[x_j]."""
    return c.weight[:, removed, :].sum(axis=2) @ moments.mean()[removed]


def input_gram(c: Consumer, moments):
    """(Σ x xᵀ over the layer's input features, sample count), or None when not captured."""
    if c.pointwise and moments.gram is not None:
        return moments.gram, moments.count
    if c.window is not None and c.node in moments.patches:
        return moments.patches[c.node]
    return None


def _obs(c: Consumer, removed: np.ndarray, moments, gram: np.ndarray, count: int,
         damping: float = DAMPING) -> tuple[np.ndarray, np.ndarray]:
    """ΔW and Δb for removing the ``removed`` input channels (each spans k features)."""
    out, channels, k = c.weight.shape
    size = channels * k
    n = max(count, 1)
    mean = np.repeat(moments.mean(), k)      # a patch feature's mean is its channel's
    h = np.empty((size + 1, size + 1))
    h[:size, :size] = gram / n
    h[:size, size] = h[size, :size] = mean
    h[size, size] = 1.0
    h[np.diag_indices_from(h)] += damping * float(np.mean(np.diag(h)))
    h_inv = np.linalg.inv(h)
    m = np.flatnonzero(np.repeat(removed, k))
    w = np.concatenate([c.weight.reshape(out, size), np.zeros((out, 1))], axis=1)
    delta = -w[:, m] @ np.linalg.solve(h_inv[np.ix_(m, m)], h_inv[m, :])
    return delta[:, :size].reshape(c.weight.shape), delta[:, size]
