"""Gradient criteria: first-order Taylor, SNIP and SynFlow.

ONNX Runtime computes no gradients, so the model runs in PyTorch (``runtime.torch_module``:
onnx2torch, the optional ``grad`` extra). Gradients of the converted module's parameters and
constant buffers come back in ONNX layout, per initializer, and are scored member by member
like the weight criteria:

* ``taylor``: |Σ w·∂L/∂w| over each member's slice: the first-order change of the loss when
  the slice is zeroed (Molchanov et al.), summed over calibration batches.
* ``snip``: Σ |w·∂L/∂w| over the slice: connection sensitivity (Lee et al.), on calibration data.
* ``synflow``: Σ |w·∂R/∂w| with every parameter replaced by its absolute value, an all-ones
  input and R the sum of the outputs (Tanaka et al.): no data.

With no labels the loss is the cross-entropy of the first output against its own arg-max
(pseudo-labels; softmax over its last axis), so the criteria stay task-agnostic. The converted
module must reproduce ONNX Runtime's outputs before any gradient is trusted; a model onnx2torch
cannot convert gets a one-line error naming the op, never a guess.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..progress import task
from ..runtime import make_inputs
from ..runtime.torch_module import Purpose, TorchModel, reported, require_torch
from .base import MemberScores, ScoringContext, criterion, per_atom

GRADIENTS = Purpose("gradient criteria", "use a criterion without gradients (wanda, obs, l2)")


def pseudo_label_loss(outputs: list, torch):
    """Cross-entropy of the first output against its own arg-max, summed over rows."""
    first = outputs[0]
    logits = first.reshape(-1, first.shape[-1]).double() if first.ndim > 1 else \
        first.reshape(1, -1).double()
    labels = logits.detach().argmax(dim=-1)
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


def loss_gradients(model: onnx.ModelProto, graph, names: set[str], batches,
                   weights: list[float] | None = None, progress=None) -> dict:
    """∂L/∂initializer (ONNX layout) of the pseudo-label loss summed over ``batches`` (each
    scaled by ``weights``, when several calibration sets were fused), for the initializers in
    ``names`` (others that the module holds are included too)."""
    torch = require_torch(GRADIENTS)
    tm = TorchModel(model, graph, names, GRADIENTS)
    tm.check_against_ort(batches[0])
    tm.track()
    with reported("back-propagate through", GRADIENTS), \
            task(progress, "back-propagating the calibration batches", len(batches)) as step:
        for k, feeds in enumerate(batches):
            loss = pseudo_label_loss(tm.forward(feeds), torch)
            (loss * weights[k] if weights else loss).backward()
            step()
    return tm.gradients()


def synflow_gradients(model: onnx.ModelProto, graph, names: set[str], feeds) -> dict:
    """∂R/∂|θ| per initializer, R = Σ outputs of the model with every float constant replaced
    by its absolute value, in float64, on an all-ones input (integer inputs keep ``feeds``)."""
    torch = require_torch(GRADIENTS)
    tm = TorchModel(model, graph, names, GRADIENTS)
    tm.check_against_ort(feeds)
    tm.module.double()
    tm.remap()
    with torch.no_grad():
        for tensor in list(tm.module.parameters()) + list(tm.module.buffers()):
            if tensor.is_floating_point():
                tensor.abs_()
    tm.track()
    ones = {n: (np.ones_like(v) if np.issubdtype(v.dtype, np.floating) else v)
            for n, v in feeds.items()}
    with reported("back-propagate through", GRADIENTS):
        outputs = [t for t in tm.forward(ones, torch.float64) if t.is_floating_point()]
        sum(t.sum() for t in outputs).backward()
    return tm.gradients()


def _names(ctx: ScoringContext) -> set[str]:
    graph = ctx.analysis.graph
    return {graph.nodes[u.node].input(u.input_index) for u in ctx.scored_uses()}


def _member_scores(ctx: ScoringContext, grads: dict, per_use) -> np.ndarray:
    acc = MemberScores(len(ctx.roots), ctx.roots, ctx.reduction)
    graph, missing = ctx.analysis.graph, set()
    for use in ctx.scored_uses():
        name = graph.nodes[use.node].input(use.input_index)
        value = ctx.value(use)
        if value is None:
            continue
        if name not in grads or grads[name].shape != value.shape:
            missing.add(graph.nodes[use.node].label)
            continue
        acc.add(use.labels, per_use(use, value.astype(np.float64), grads[name]))
    if missing:
        ctx.notes.append(f"no gradient for the weights of {len(missing)} node(s) (e.g. "
                         f"{sorted(missing)[0]}): their members are not scored")
    return acc.result()


def _calibration_gradients(ctx: ScoringContext) -> dict:
    stats = ctx.calibration
    return loss_gradients(ctx.analysis.graph.model, ctx.analysis.graph, _names(ctx),
                          stats.batches, stats.batch_weights, ctx.progress)


@criterion("taylor", needs="calibration")
def taylor(ctx: ScoringContext) -> np.ndarray:
    """|Σ w·∂L/∂w| per member slice: first-order loss change when it is zeroed (gradients)."""
    return _member_scores(ctx, _calibration_gradients(ctx),
                          lambda u, w, g: np.abs(per_atom(u, w * g)))


@criterion("snip", needs="calibration")
def snip(ctx: ScoringContext) -> np.ndarray:
    """Σ |w·∂L/∂w| per member slice: connection sensitivity on calibration data (gradients)."""
    return _member_scores(ctx, _calibration_gradients(ctx),
                          lambda u, w, g: per_atom(u, np.abs(w * g)))


@criterion("synflow")
def synflow(ctx: ScoringContext) -> np.ndarray:
    """Σ |w|·∂R/∂|w| per member slice, R the all-ones output of the |w| model (no data)."""
    graph = ctx.analysis.graph
    feeds = make_inputs(graph.model, ctx.input_shapes, ctx.seed)
    grads = synflow_gradients(graph.model, graph, _names(ctx), feeds)
    return _member_scores(ctx, grads, lambda u, w, g: per_atom(u, np.abs(w) * g))
