"""Repair the layers that read removed channels, without training.

* ``bias`` (FLAP): the removed inputs' expected contribution, Σ_j W[:, j]·E[x_j], moves into
  the layer's bias, so its outputs keep their mean.
* ``obs``: the optimal brain surgeon update. With H = E[x xᵀ] over the layer's inputs (plus a
  constant 1 so that the bias is re-fit too), removing the set M and re-fitting the rest in the
  least-squares sense is ΔW = −W[:, M]·([H⁻¹]_MM)⁻¹·[H⁻¹]_M,: (IST-DASLab OBC). For a k×k conv
  H is over its input patches (C·k features, a channel removing its k); for a grouped conv
  there is one H per group, since each output reads its own group's channels only. Layers
  whose H was not captured (too wide, 3-D kernels) get the bias update; transposed convs,
  whose inputs spread over overlapping outputs, are left as they are. The notes say which.

Integer layers (QOperator, dynamic quantization) are re-fitted as the floats they stand for
and quantized back with their own scales (``LinearView.write``); their rounding is part of
the model both the pruned and the masked copy come from.

The correction is written into a copy of the *original* model (removed columns stay as they
are), so the pruned and the masked model are both derived from it and the oracle still holds.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..calibration.hessian import DAMPING, damped, input_gram
from ..graph import ModelGraph
from ..groups import Analysis, Consumer, find_consumers

METHODS = ("bias", "obs")     # what this module does; the package adds "none" and "sequential"
MAX_UPDATE = 2.0    # an OBS update larger than this share of the kept weights is damped more
MAX_DAMPING = 100.0  # ... up to this λ, where the update is close to plain removal


def refit(model: onnx.ModelProto, analysis: Analysis, removed_atom: np.ndarray, stats,
          method: str, damping: float = DAMPING) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with every consumer of removed channels re-fitted; notes say which
    layers were left as they are, and why. ``damping``: λ of the OBS update (a larger one
    keeps it closer to plain removal, which is safer when there are few calibration samples
    per input feature)."""
    if method not in METHODS:
        raise ValueError(method)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = ModelGraph(out, infer_shapes=False)
    notes = []
    for c in find_consumers(analysis):
        removed = removed_atom[c.labels]
        if not removed.any() or removed.all():
            continue
        label = graph.nodes[c.node].label
        why = _why_not(c, graph, stats)
        if why:
            notes.append(f"{label}: {why}")
            continue
        moments = stats.get(c.input_name)
        gram = input_gram(c, moments)
        if method == "obs" and gram is not None:
            delta_w, delta_b, note = _bounded_obs(c, removed, moments, gram, damping)
            if note:
                notes.append(f"{label}: {note}")
        else:
            if method == "obs":
                notes.append(f"{label}: not pointwise (or too wide), bias compensation instead")
            delta_w, delta_b = np.zeros_like(c.weight), _bias(c, removed, moments)
        if delta_w.any():
            graph.set_const(graph.nodes[c.node], c.view.weight_input,
                            c.write(c.weight + delta_w))
        add_to_bias(graph, c, delta_b)
    return out, notes


def add_to_bias(graph: ModelGraph, c: Consumer, delta_b: np.ndarray) -> None:
    """Add Δb to the layer's bias; an integer bias (QLinearConv's int32) moves by whole steps
    of ``LinearView.bias_unit``."""
    node_index, input_index, sign = c.bias
    owner = graph.nodes[node_index]
    value = graph.const(owner.input(input_index))
    delta = sign * delta_b.reshape(value.shape)
    if c.view.bias_unit is not None:
        delta = np.round(delta / c.view.bias_unit.reshape(value.shape))
    graph.set_const(owner, input_index, (value + delta).astype(value.dtype))


def _why_not(c: Consumer, graph: ModelGraph, stats) -> str | None:
    """Why a consumer cannot be re-fitted, or None."""
    moments = stats.get(c.input_name) if stats is not None else None
    if not c.view.exact:
        return "a transposed conv (its inputs spread over overlapping outputs), not compensated"
    if moments is None or not moments.count:
        return "no calibration statistics, not compensated"
    if c.bias is None:
        return "no bias to absorb the correction, not compensated"
    node_index, input_index, _ = c.bias
    if (graph.quantized_source(graph.nodes[c.node].input(c.view.weight_input)) is not None or
            graph.quantized_source(graph.nodes[node_index].input(input_index)) is not None):
        return ("weights stored quantized, not compensated (a correction would not survive "
                "rounding to the stored integers)")
    return None


def _bias(c: Consumer, removed: np.ndarray, moments) -> np.ndarray:
    """Σ_{j removed} Σ_k W[:, j, k]·E[x_j], each output summing over its group's inputs."""
    mean = moments.mean()
    delta = np.zeros(c.weight.shape[0])
    for rows, channels in c.blocks():
        gone = removed[channels]
        delta[rows] = c.weight[rows][:, gone, :].sum(axis=2) @ mean[channels][gone]
    return delta


def _bounded_obs(c: Consumer, removed: np.ndarray, moments, gram, damping: float):
    """The OBS update, damped further (λ × 10 at a time, up to ``MAX_DAMPING``) while it is
    more than ``MAX_UPDATE`` times the weights it changes: statistics from few samples, or from noise,
    make H nearly singular, and an update that large turns float32 rounding into errors the
    check can see. Returns (ΔW, Δb, a note when it had to be damped)."""
    level, first = damping, None
    while True:
        delta_w, delta_b = _obs(c, removed, moments, *gram, damping=level)
        size = _relative_size(c, removed, delta_w)
        if size <= MAX_UPDATE or level >= MAX_DAMPING:
            break
        first = size if first is None else first
        level *= 10
    if level == damping:
        return delta_w, delta_b, None
    return delta_w, delta_b, (f"OBS update damped to λ={level:g} (at λ={damping:g} it was "
                              f"{first:.1f}× the kept weights; now {size:.2f}×)")


def _relative_size(c: Consumer, removed: np.ndarray, delta_w: np.ndarray) -> float:
    """‖ΔW‖ / ‖W‖ over the kept input channels."""
    change = total = 0.0
    for rows, channels in c.blocks():
        kept = ~removed[channels]
        change += float(np.sum(np.square(delta_w[rows][:, kept])))
        total += float(np.sum(np.square(c.weight[rows][:, kept])))
    return float(np.sqrt(change / total)) if total > 0 else 0.0


def _obs(c: Consumer, removed: np.ndarray, moments, gram: np.ndarray, count: int,
         damping: float = DAMPING) -> tuple[np.ndarray, np.ndarray]:
    """ΔW and Δb for removing the ``removed`` input channels (each spans k features), one
    least-squares re-fit per group of channels."""
    delta_w, delta_b = np.zeros_like(c.weight), np.zeros(c.weight.shape[0])
    mean = moments.mean()
    for g, (rows, channels) in enumerate(c.blocks()):
        delta_w[rows], delta_b[rows] = _obs_block(
            c.weight[rows], removed[channels], mean[channels], gram[g], count, damping)
    return delta_w, delta_b


def _obs_block(weight: np.ndarray, removed: np.ndarray, channel_mean: np.ndarray,
               gram: np.ndarray, count: int, damping: float) -> tuple[np.ndarray, np.ndarray]:
    out, channels, k = weight.shape
    size = channels * k
    n = max(count, 1)
    mean = np.repeat(channel_mean, k)        # a patch feature's mean is its channel's
    h = np.empty((size + 1, size + 1))
    h[:size, :size] = gram / n
    h[:size, size] = h[size, :size] = mean
    h[size, size] = 1.0
    h_inv = np.linalg.inv(damped(h, damping))
    m = np.flatnonzero(np.repeat(removed, k))
    w = np.concatenate([weight.reshape(out, size), np.zeros((out, 1))], axis=1)
    delta = -w[:, m] @ np.linalg.solve(h_inv[np.ix_(m, m)], h_inv[m, :])
    return delta[:, :size].reshape(weight.shape), delta[:, size]
