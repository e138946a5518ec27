"""Proof that a rewritten model is right: it passes the full ONNX checker, runs on ONNX
Runtime with the original's inputs and outputs, and matches the masked original."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import one_line
from ..io.weights import WeightStore
from ..runtime.feeds import user_inputs
from ..runtime.run import needs_exact_run, run_model, sliced
from ..runtime.session import session

# Below this share of an output's largest |value|, a channel is compared against that share
# rather than against its own scale: float32 sums of different lengths (a pruned layer and its
# masked original) round by about 1e-7 of the terms they add, so a channel of near-zero values
# made by cancelling large terms must not be held to its own tiny scale.
CHANNEL_FLOOR = 1e-2


@dataclass
class CheckResult:
    checker: bool
    runs: bool
    same_io: bool
    max_rel_error: float | None
    tolerance: float
    output_errors: dict[str, float] = field(default_factory=dict)   # per output

    @property
    def ok(self) -> bool:
        return self.checker and self.runs and self.same_io and (
            self.max_rel_error is not None and self.max_rel_error <= self.tolerance)


PRIVATE_DOMAIN = "onnxprune.unchecked"     # where the check moves ops ONNX does not define


def unknown_ops(model: onnx.ModelProto) -> list[str]:
    """Op types in ONNX's own domain that ONNX does not define: ONNX Runtime contrib ops that
    exporters (onnxruntime-genai's model builder) write there, and ORT runs."""
    return sorted({n.op_type for n in model.graph.node
                   if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)})


def check_model(model: onnx.ModelProto) -> None:
    """Full check: structure, types and strict shape inference. A model whose weights are in
    files is checked from a file (see ``WeightStore.checkable``). Nodes of ops ONNX does not
    define (``unknown_ops``) are moved to a private domain for the duration of the check, so
    the checker verifies everything else; only ONNX Runtime can vouch for them."""
    unknown = set(unknown_ops(model))
    moved = [(n, n.domain if n.HasField("domain") else None) for n in model.graph.node
             if n.op_type in unknown and n.domain in ("", "ai.onnx")]
    for node, _ in moved:
        node.domain = PRIVATE_DOMAIN
    if moved:
        model.opset_import.append(onnx.helper.make_opsetid(PRIVATE_DOMAIN, 1))
    try:
        store = WeightStore.of(model)
        if store is None:
            return onnx.checker.check_model(model, full_check=True)
        with store.checkable(model) as path:
            onnx.checker.check_model(str(path), full_check=True)
    finally:
        for node, domain in moved:
            if domain is None:
                node.ClearField("domain")
            else:
                node.domain = domain
        if moved:
            del model.opset_import[len(model.opset_import) - 1]


def input_problem(model: onnx.ModelProto, runtime: bool = True) -> str | None:
    """Why the *input* model is itself unusable, or None: an opset newer than the installed
    onnx knows, a failed full check, or (with ``runtime``) a model ONNX Runtime cannot load
    (an op from a domain it does not implement, say). ``prune`` asks only after something
    went wrong, so that a broken input is reported as the user's problem rather than as a
    failed rewrite; ``inspect``, which runs nothing, asks first."""
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            return (f"the model imports ONNX opset {opset.version}, newer than this onnx "
                    f"{onnx.__version__} knows (up to {newest})")
    try:
        check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return f"the input model fails onnx.checker: {one_line(str(exc), 200)}"
    if not runtime:
        return None
    try:
        session(model)
    except Exception as exc:  # noqa: BLE001 - whatever ORT refuses, it refuses the input
        return f"ONNX Runtime cannot load the input model: {one_line(str(exc), 200)}"
    return None


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """The largest |got − want| relative to the scale of its channel (0 for identical arrays).

    A channel's scale is the largest |want| in its slice of the output; of the slices through
    an element (one per axis with more than one position and more than one value in each
    slice), the smallest counts, and no scale is below ``CHANNEL_FLOOR`` of the whole output's
    largest |value|. One scale for the whole output would let an error hide in a small channel
    beside large ones: a YOLO head holds pixel boxes (hundreds) beside 0-1 class scores."""
    if got.shape != want.shape:
        return float("inf")
    if not np.issubdtype(want.dtype, np.floating):
        return 0.0 if np.array_equal(got, want) else float("inf")
    want64 = want.astype(np.float64)
    diff = np.abs(got.astype(np.float64) - want64)
    magnitude = np.abs(want64)
    top = float(np.max(magnitude, initial=0.0))
    if top == 0.0 or diff.size == 0:
        return float(np.max(diff, initial=0.0))
    scale = np.full(want.shape, top)
    for axis, size in enumerate(want.shape):
        if size > 1 and want.size > size:
            others = tuple(a for a in range(want.ndim) if a != axis)
            scale = np.minimum(scale, magnitude.max(axis=others, keepdims=True))
    return float(np.max(diff / np.maximum(scale, CHANNEL_FLOOR * top)))


def compare_outputs(pruned: onnx.ModelProto, reference: onnx.ModelProto,
                    feeds: dict[str, np.ndarray], tolerance: float = 1e-4,
                    step=None, io: dict | None = None) -> CheckResult:
    """Checker + ORT run of ``pruned`` and comparison with ``reference`` on the same inputs
    (``step()``, when given, is called after each of the three). ``io``: inputs and outputs
    the pruning resized (a KV cache that lost heads, see ``runtime.sliced``): the pruned
    model takes those inputs cut to the kept positions, and its outputs are compared with
    the reference's cut the same way."""
    step = step or (lambda amount=1: None)
    try:
        check_model(pruned)
        checker = True
    except Exception:  # noqa: BLE001 - reported as a failed check
        checker = False
    step()
    same_io = (user_inputs(pruned) == user_inputs(reference)
               and [o.name for o in pruned.graph.output] == [o.name for o in reference.graph.output])
    own = sliced(feeds, io)
    try:
        got = run_model(pruned, own)      # it must run as users will run it
        runs = True
    except Exception:  # noqa: BLE001
        return CheckResult(checker, False, same_io, None, tolerance)
    if needs_exact_run(pruned):
        got = run_model(pruned, own, exact=True)
    step()
    want = sliced(run_model(reference, feeds, exact=True), io)
    errors = {k: relative_error(got[k], want[k]) for k in want}
    step()
    return CheckResult(checker, runs, same_io, max(errors.values(), default=0.0), tolerance,
                       errors)
