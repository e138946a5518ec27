"""What a prune cost, shown on every run: the pruned model against the dense one on the
calibration inputs when there are some, else on the check inputs. A model that passes the
oracle (it computes what the masked original computes) may still have lost its task; this says
so before the user finds out by running it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..runtime import batch_outputs, sliced
from ..runtime.feeds import batch_axes, sample_count, take_samples
from ..runtime.fidelity import output_fidelity

COLLAPSED_COSINE = 0.8     # mean cosine of an output to the dense one below this: collapsed
COLLAPSED_TOP1 = 0.5       # top-1 agreement of class scores below this: collapsed
MAX_SAMPLES = 64           # calibration samples the comparison runs on, at most
MIN_SAMPLES = 4            # ... and at least, however large the model
COMPARISON_MACS = 2e11     # MACs one model may spend on the comparison (a 1B decoder: 4 samples)


@dataclass
class FidelitySection:
    """Per output: the mean and the lowest cosine of each sample's output to the dense
    model's, and the top-1 agreement where the output holds class scores."""

    inputs: str
    samples: int
    outputs: list[dict]
    collapsed: bool
    warning: str | None = None


def fidelity_to_dense(dense, pruned, batches, inputs: str, io: dict | None = None,
                      macs_per_sample: int | None = None) -> FidelitySection:
    """Run both models on ``batches`` (at most ``MAX_SAMPLES`` samples, fewer where
    ``macs_per_sample`` says a sample is dear: a large model's comparison must not cost more
    than its prune) and compare; ``io``: inputs and outputs the pruning resized (see
    ``runtime.sliced``)."""
    limit = MAX_SAMPLES
    if macs_per_sample:
        limit = int(min(max(COMPARISON_MACS // macs_per_sample, MIN_SAMPLES), MAX_SAMPLES))
    axes = batch_axes(dense) if isinstance(dense, onnx.ModelProto) else {}
    batches = _first_samples(batches, limit, axes)
    try:
        dense_outputs = batch_outputs(dense, batches)
    except Exception:  # noqa: BLE001 - a model that takes one sample at a time (ORT's
        # GroupQueryAttention with a past cache and several new tokens): one per batch
        single = [take_samples(f, axes, i, i + 1) for f in batches
                  for i in range(sample_count(f, axes))]
        if len(single) == len(batches):
            raise
        batches, dense_outputs = single, batch_outputs(dense, single)
    sizes = [sample_count(feeds, axes) for feeds in batches]
    before = [sliced(b, io) for b in dense_outputs]
    after = batch_outputs(pruned, [sliced(b, io) for b in batches])
    outputs = []
    for name, value in before[0].items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        row = output_fidelity(name, [b[name] for b in before], [a[name] for a in after], sizes)
        outputs.append({k: row[k] for k in ("name", "cosine_mean", "cosine_min",
                                            "top1_agreement")})
    collapsed = any(o["cosine_mean"] < COLLAPSED_COSINE or (
        o["top1_agreement"] is not None and o["top1_agreement"] < COLLAPSED_TOP1)
        for o in outputs)
    section = FidelitySection(inputs, sum(sizes), outputs, collapsed)
    if collapsed:
        section.warning = ("the pruned model's outputs are far from the dense model's (see "
                           "fidelity): give calibration data (--calib, a few dozen unlabeled "
                           "samples), recover by distillation (--recover, or onnxprune "
                           "recover), or prune less")
    return section


def _first_samples(batches, limit: int, axes: dict) -> list[dict]:
    """The first ``limit`` samples (the last batch cut on each input's sample axis, see
    ``runtime.feeds.batch_axes``: a shared scalar input stays whole)."""
    kept, count = [], 0
    for feeds in batches:
        if count >= limit:
            break
        size = sample_count(feeds, axes)
        if count + size > limit:
            feeds = take_samples(feeds, axes, 0, limit - count)
            size = limit - count
        kept.append(feeds)
        count += size
    return kept
