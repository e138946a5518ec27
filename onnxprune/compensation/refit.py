"""Repair the layers that read removed channels, without training.

* ``bias`` (FLAP): the removed inputs' expected contribution, Σ_j W[:, j]·E[x_j], moves into
  the layer's bias, so its outputs keep their mean.
* ``obs``: the optimal brain surgeon update. With H = E[x xᵀ] over the layer's inputs (plus a
  constant 1 so that the bias is re-fit too, where the layer has one: a bias-free layer, as in
  every Llama-style decoder, re-fits its weights alone, as SparseGPT does), removing the set M
  and re-fitting the rest in the least-squares sense is ΔW = −W[:, M]·([H⁻¹]_MM)⁻¹·[H⁻¹]_M,:
  (IST-DASLab OBC). For a k×k conv H is over its input patches (C·k features, a channel
  removing its k); for a grouped conv there is one H per group, since each output reads its
  own group's channels only. A pointwise layer's update is first fitted on every other
  calibration batch and checked on the rest: where it does not beat plain removal there, it
  is damped harder or declined (``_validated_damping``). Layers whose H was not captured (too
  wide, 3-D kernels) get the bias update (where they have a bias); transposed convs, whose
  inputs spread over overlapping outputs, are left as they are. The notes say which.

Integer layers (QOperator, dynamic quantization) are re-fitted as the floats they stand for
and quantized back with their own scales (``LinearView.write``); their rounding is part of
the model both the pruned and the masked copy come from.

The correction is written into a copy of the *original* model (removed columns stay as they
are), so the pruned and the masked model are both derived from it and the oracle still holds.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..calibration.hessian import DAMPING, input_gram, solve_damped
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
        gram = input_gram(c, moments) if method == "obs" else None
        if gram is not None:
            level, note = _validated_damping(c, removed, moments, gram, damping)
            if level is None:
                notes.append(f"{label}: {note}")
                continue
            delta_w, delta_b, more = _bounded_obs(c, removed, moments, gram, level)
            for text in (note, more):
                if text:
                    notes.append(f"{label}: {text}")
        elif c.bias is None:
            notes.append(f"{label}: no bias to absorb the correction" + (
                " (and no Gram matrix for OBS)" if method == "obs" else "") +
                ", not compensated")
            continue
        else:
            if method == "obs":
                notes.append(f"{label}: not pointwise (or too wide), bias compensation instead")
            delta_w, delta_b = np.zeros_like(c.weight), _bias(c, removed, moments)
        if delta_w.any():
            graph.set_const(graph.nodes[c.node], c.view.weight_input,
                            c.write(c.weight + delta_w))
        if c.bias is not None:
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
    stored = [graph.nodes[c.node].input(c.view.weight_input)]
    if c.bias is not None:
        stored.append(graph.nodes[c.bias[0]].input(c.bias[1]))
    if any(graph.quantized_source(name) is not None for name in stored):
        return ("weights stored quantized, not compensated (a correction would not survive "
                "rounding to the stored integers)")
    return None


def _bias(c: Consumer, removed: np.ndarray, moments) -> np.ndarray:
    """Σ_{j removed} Σ_k W[:, j, k]·E[x_j], each output summing over its group's inputs."""
    mean = moments.mean()
    delta = np.zeros(c.view.shape[0])
    for rows, channels in c.blocks():
        gone = removed[channels]
        delta[rows] = c.weight[rows][:, gone, :].sum(axis=2) @ mean[channels][gone]
    return delta


HARDER = 100.0      # the second damping validation tries: this many times the first
VALIDATED_ROWS = 256    # output rows the validation re-fits, at most


def _validated_damping(c: Consumer, removed: np.ndarray, moments, gram, damping: float
                       ) -> tuple[float | None, str | None]:
    """The damping of a pointwise layer's OBS update, checked on held-out calibration: the
    update fitted on every other batch must bring the layer's outputs on the remaining
    batches closer to the dense ones than plain removal does. A layer with as many input
    features as calibration positions (a 1B decoder's 8192-wide MLP on 64 sequences of 128
    tokens) over-fits: ``damping``, else ``HARDER`` times it, else no update (None), with a
    note saying which. Without held-out batches (one batch, grouped or k×k layers, mixed
    sets), ``damping`` as given."""
    fit_count = moments.count - moments.held_count
    if c.groups != 1 or not c.pointwise or not moments.held_count or fit_count <= 0:
        return damping, None
    held = moments.held_gram        # read once, and only where it is used
    mean, bias = moments.mean(), c.bias is not None
    # Outputs are alike to this test: a sample of ``VALIDATED_ROWS`` of them decides (an
    # 8192 × 2048 layer is then checked in a few seconds rather than refitted in full).
    w = c.weight[::max(1, c.view.shape[0] // VALIDATED_ROWS)]
    plain = np.zeros(w.shape[:2])
    plain[:, removed] = -w[:, removed, 0]
    baseline = _held_out_error(plain, np.zeros(len(w)), held, moments.held_count, mean, bias)
    if baseline <= 0.0:     # the removed inputs are 0 on the held-out batches: nothing to fit
        return damping, None
    blocks = ObsBlocks(removed, mean, gram[0][0] - held, fit_count, 1, bias)
    tried = []
    for level in (damping, damping * HARDER):
        delta_w, delta_b = blocks.update(w, level)
        error = _held_out_error(delta_w[:, :, 0], delta_b, held, moments.held_count, mean,
                                bias)
        tried.append(f"λ={level:g}: {error / baseline:.2f}")
        if error < baseline:
            note = None if level == damping else (
                f"OBS update damped to λ={level:g}: on held-out calibration batches, "
                f"λ={damping:g} left the outputs further from the dense ones than plain "
                f"removal ({', '.join(tried)} of its error)")
            return level, note
    return None, ("OBS update declined: on held-out calibration batches it left the outputs "
                  f"further from the dense ones than plain removal ({', '.join(tried)} of its "
                  f"error; more calibration samples per input feature would help)")


def _held_out_error(delta_w: np.ndarray, delta_b: np.ndarray, held: np.ndarray, count: int,
                    mean: np.ndarray, bias: bool) -> float:
    """E‖ΔW·x + Δb‖² over the ``count`` held-out positions (``held``: their Σ x xᵀ; the bias
    term with the mean of all calibration): how far the re-fitted layer's outputs are from
    the dense layer's, its removed inputs' weights being −W in ``delta_w``."""
    error = float(np.einsum("ij,ij->", delta_w @ held, delta_w)) / count
    if bias:
        error += 2.0 * float(delta_b @ (delta_w @ mean)) + float(delta_b @ delta_b)
    return error


def _bounded_obs(c: Consumer, removed: np.ndarray, moments, gram, damping: float):
    """The OBS update, damped further (λ × 10 at a time, up to ``MAX_DAMPING``) while it is
    more than ``MAX_UPDATE`` times the weights it changes: statistics from few samples, or
    from noise, make H nearly singular, and an update that large turns float32 rounding into
    errors the check can see. H's blocks are built once for every damping tried. Returns
    (ΔW, Δb, a note when it had to be damped)."""
    blocks = _group_blocks(c, removed, moments, *gram)
    level, first = damping, None
    while True:
        delta_w, delta_b = _updates(c, blocks, level)
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
    return _updates(c, _group_blocks(c, removed, moments, gram, count), damping)


def _group_blocks(c: Consumer, removed: np.ndarray, moments, gram: np.ndarray,
                  count: int) -> list:
    """Per group of channels: its rows, and the :class:`ObsBlocks` of its own H."""
    mean = moments.mean()
    return [(rows, ObsBlocks(removed[channels], mean[channels], gram[g], count,
                             c.view.shape[2], c.bias is not None))
            for g, (rows, channels) in enumerate(c.blocks())]


def _updates(c: Consumer, blocks: list, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """ΔW and Δb of the whole layer at ``damping``, from :func:`_group_blocks`."""
    delta_w, delta_b = np.zeros_like(c.weight), np.zeros(c.view.shape[0])
    for rows, group in blocks:
        delta_w[rows], delta_b[rows] = group.update(c.weight[rows], damping)
    return delta_w, delta_b


class ObsBlocks:
    """The two blocks of H = E[x xᵀ] (the constant 1 among the features where a ``bias`` is
    re-fitted) that OBS's update reads: kept × kept and removed × kept, built once for any
    number of dampings and weights, never all of H. OBS's update (the module's formula) is,
    by the block inverse, the removed weights' share re-fitted onto the kept features: ΔW_K
    = W_M H_MK H_KK⁻¹, ΔW_M = −W_M. One solve with H_KK rather than inverting all of H: a
    quarter of the work on a 1B decoder's 8192-wide MLP; and no 8193² copy of H per try."""

    def __init__(self, removed: np.ndarray, channel_mean: np.ndarray, gram: np.ndarray,
                 count: int, k: int, bias: bool):
        n = max(count, 1)
        gone = np.repeat(removed, k)
        self.size, self.bias = gone.size, bias
        self.m, kept = np.flatnonzero(gone), np.flatnonzero(~gone)
        self.h_kk, self.h_mk = gram[np.ix_(kept, kept)], gram[np.ix_(self.m, kept)]
        self.h_kk /= n
        self.h_mk /= n
        diagonal = np.diag(gram) / n
        if bias:        # the constant feature, kept: its column is each feature's mean
            mean = np.repeat(channel_mean, k)        # a patch feature's mean is its channel's
            self.h_kk = np.block([[self.h_kk, mean[kept, None]], [mean[None, kept], 1.0]])
            self.h_mk = np.concatenate([self.h_mk, mean[self.m, None]], axis=1)
            kept = np.append(kept, self.size)
            diagonal = np.append(diagonal, 1.0)
        self.kept = kept
        self.unit = float(np.mean(diagonal))       # damping λ adds λ·mean(diag H)

    def update(self, weight: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
        """(ΔW, Δb) of ``weight`` [out, channels, k] with H_KK damped by ``damping``."""
        out, size = weight.shape[0], self.size
        w = np.concatenate([weight.reshape(out, size), np.zeros((out, int(self.bias)))], axis=1)
        h = self.h_kk.copy()
        h[np.diag_indices_from(h)] += damping * self.unit
        delta = np.zeros_like(w)
        delta[:, self.m] = -w[:, self.m]
        delta[:, self.kept] = solve_damped(h, (w[:, self.m] @ self.h_mk).T).T
        return (delta[:, :size].reshape(weight.shape),
                delta[:, size] if self.bias else np.zeros(out))
