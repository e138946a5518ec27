"""Recovery after pruning (``onnxprune recover``, ``prune --recover``): the calibration
sources become the unlabeled inputs the dense model teaches the pruned one on."""

from __future__ import annotations

import numpy as np
import onnx

from ..calibration import as_sources, source_batches
from ..errors import UserError
from ..importance import consumed_inputs
from ..io import load_model
from ..recovery import RecoverOptions, recover
from .analyze import Analyzed


def recovery_batches(model: onnx.ModelProto, calib, input_shapes=None, seed: int = 0,
                     samples: int = RecoverOptions.samples, progress=None) -> list[dict]:
    """The feeds of every source, one after another (weights of fused sources do not apply:
    each sample is one training example); a generated source gives ``samples`` of them."""
    if calib is None:
        raise UserError("recovery needs inputs to distil on: give --calib (an .npz, an image "
                        "folder, or a generated source such as natural, inverted or random)")
    return [feeds for source in as_sources(calib)
            for feeds in source_batches(source, model, input_shapes, seed, samples, progress)]


def kept_channels(a: Analyzed, removed: np.ndarray) -> dict:
    """{tensor: (axis, indices of the channels kept)} for every tensor a linear layer reads
    whose channels (one tracked axis) the plan thinned: what ``--recover-features`` matches."""
    out = {}
    for name, cmap in consumed_inputs(a.analysis).items():
        if cmap.single_axis is None or cmap.tiled:
            continue
        gone = removed[cmap.labels]
        if gone.any() and not gone.all():
            out[name] = (cmap.single_axis, np.flatnonzero(~gone))
    return out


def recover_pruned(dense, pruned, calib, options: RecoverOptions | None = None,
                   input_shapes=None, progress=None, kept: dict | None = None
                   ) -> tuple[onnx.ModelProto, dict]:
    """``pruned`` trained to reproduce ``dense`` on the ``calib`` inputs, and the recovery
    section of the report. ``dense`` and ``pruned``: paths or ModelProtos; the pruned graph is
    kept as it is (only initializer values change). ``kept``: see :func:`kept_channels`."""
    options = options or RecoverOptions()
    options.check()
    teacher = load_model(dense)
    student = _exact(pruned)
    batches = recovery_batches(teacher, calib, input_shapes, options.seed, options.samples,
                               progress)
    model, report = recover(teacher, student, batches, options, progress, kept)
    return model, report.to_dict()


def _exact(model) -> onnx.ModelProto:
    """The model as stored (no normalization: the graph written back must be this one)."""
    if isinstance(model, onnx.ModelProto):
        return model
    load_model(model)       # a missing or broken file: its one-line error
    return onnx.load(str(model))
