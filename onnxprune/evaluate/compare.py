"""What pruning cost in fidelity: the original and the pruned model on the same inputs.

The mask-equivalence check proves the rewrite is right; it says nothing about how far the pruned
model's outputs moved from the original's. That distance is what a user pays for the speed, so
it is measured per output (absolute errors, per-sample cosine similarity, top-1 agreement for
class scores) and, with labels, as accuracy and per-class recall. Pruning is known to hurt some
classes far more than the average ("recall distortion": the overall accuracy barely moves while
a few classes collapse), so classes whose recall drops by more than the overall accuracy are
flagged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from ..calibration import fixed_batch, load_calibration
from ..errors import UserError, one_line
from ..io import load_model
from ..runtime import count_cost, session, user_inputs
from ..runtime.feeds import batch_axes, sample_count
from ..runtime.fidelity import is_scores, output_fidelity

LABELS_KEY = "labels"   # an array of this name inside the --data .npz holds the labels


def compare_models(original, pruned, data: str = "random", labels=None, input_shapes=None,
                   preprocess: str | None = None, samples: int | None = None) -> dict:
    """Run ``original`` and ``pruned`` (paths or ModelProtos) on the inputs ``data`` gives (as
    ``load_calibration`` reads them) and measure how far the outputs moved.

    ``labels``: a ``.npy`` path or an int array (one class id per sample); without it, an array
    named ``labels`` in a ``.npz`` ``data`` is used. Returns a JSON-ready dict: ``outputs`` (one
    entry per output) and, with labels, ``labels`` (accuracy and per-class recall, flagged
    classes)."""
    a, b = load_model(original), load_model(pruned)
    _check_same_io(a, b)
    reference = _reference(a, _name(original), data, labels, input_shapes, preprocess, samples)
    return _compare(reference, b, _name(pruned))


@dataclass
class Reference:
    """The original model's outputs on the comparison inputs, kept so that several pruned
    models (a sweep) are compared with it without reading the data or running it again."""

    model: onnx.ModelProto
    name: str
    data: str
    input_shapes: dict | None
    batches: list[dict]
    sizes: list[int]
    outputs: dict[str, list[np.ndarray]]
    labels: np.ndarray | None
    label_source: str | None

    @property
    def samples(self) -> int:
        return sum(self.sizes)


def reference_run(original, data: str = "random", labels=None, input_shapes=None,
                  preprocess: str | None = None, samples: int | None = None) -> Reference:
    """Read ``data`` and run ``original`` on it once (arguments as for :func:`compare_models`);
    :func:`compare_with_reference` then measures any pruned model against it."""
    return _reference(load_model(original), _name(original), data, labels, input_shapes,
                      preprocess, samples)


def compare_with_reference(reference: Reference, pruned) -> dict:
    """:func:`compare_models` of ``reference``'s model and ``pruned`` (a path or ModelProto),
    reusing the reference's inputs and outputs."""
    b = load_model(pruned)
    _check_same_io(reference.model, b)
    return _compare(reference, b, _name(pruned))


def _reference(a: onnx.ModelProto, name: str, data, labels, input_shapes, preprocess,
               samples) -> Reference:
    label_values, label_source = _labels(labels, data, a)
    if label_values is not None and data in ("random", "synthetic") and samples is None:
        samples = len(label_values)
    elif label_values is not None and samples is not None:
        label_values = label_values[:samples]      # the first samples of the data, in order
    batches = load_calibration(data, a, input_shapes, samples=samples, preprocess=preprocess)
    axes = batch_axes(a)
    sizes = [sample_count(feeds, axes) for feeds in batches]
    return Reference(a, name, str(data), input_shapes, batches, sizes,
                     _run(a, batches, name), label_values, label_source)


def _compare(ref: Reference, b: onnx.ModelProto, name: str) -> dict:
    got_a, got_b = ref.outputs, _run(b, ref.batches, name)
    count = ref.samples
    outputs = [output_fidelity(n, got_a[n], got_b[n], ref.sizes) for n in got_a]
    report = {"original": ref.name, "pruned": name, "data": ref.data, "samples": count,
              "cost": {"original": _cost(ref.model, ref.input_shapes),
                       "pruned": _cost(b, ref.input_shapes)},
              "outputs": outputs, "labels": None}
    if ref.labels is not None:
        label_values = _fit_labels(ref.labels, count, ref.model)
        scores = _scores_output(got_a, count)
        report["labels"] = {"source": ref.label_source, "output": scores,
                            **recall_distortion(label_values,
                                                _predict(got_a[scores], label_values, scores),
                                                _predict(got_b[scores], label_values, scores))}
    return report


def _name(model) -> str:
    return "<ModelProto>" if isinstance(model, onnx.ModelProto) else str(model)


def _cost(model: onnx.ModelProto, shapes) -> dict:
    cost = count_cost(model, shapes)
    return {"params": cost.params, "macs": cost.macs}


def _check_same_io(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    """Outputs are compared by name on the same feeds, so both names must match as sets."""
    for kind, names_a, names_b in (
            ("inputs", user_inputs(a), user_inputs(b)),
            ("outputs", [o.name for o in a.graph.output], [o.name for o in b.graph.output])):
        if sorted(names_a) != sorted(names_b):
            raise UserError(f"the two models have different {kind}: "
                            f"{', '.join(names_a)} vs {', '.join(names_b)}")


def _run(model: onnx.ModelProto, batches: list[dict], label: str
         ) -> dict[str, list[np.ndarray]]:
    """Every output of every batch, in order."""
    try:
        sess = session(model)
    except Exception as exc:  # noqa: BLE001 - a model ORT cannot load is the user's input
        raise UserError(f"onnxruntime cannot load {label}: {_first_line(exc)}") from None
    names = [o.name for o in sess.get_outputs()]
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feeds in batches:
        try:
            values = sess.run(names, feeds)
        except Exception as exc:  # noqa: BLE001 - shapes from --input-shape or the data
            raise UserError(f"{label} does not run on these inputs: {_first_line(exc)}") \
                from None
        for n, v in zip(names, values):
            got[n].append(np.asarray(v))
    return got


def _first_line(exc: BaseException) -> str:
    return one_line(str(exc)) or type(exc).__name__


# --- labels ---------------------------------------------------------------------------------

def _labels(labels, data, model) -> tuple[np.ndarray | None, str | None]:
    if labels is None:
        return _labels_in_data(data, model)
    if isinstance(labels, (str, os.PathLike)):
        path = str(labels)
        if not os.path.isfile(path):
            raise UserError(f"labels file not found: {path}")
        try:
            value = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
            raise UserError(f"cannot read labels {path}: {_first_line(exc)}") from None
        if not isinstance(value, np.ndarray):
            raise UserError(f"{path}: expected a .npy array of class ids, got an archive")
        return _as_ids(value, path), path
    return _as_ids(np.asarray(labels), "labels"), "given"


def _labels_in_data(data, model) -> tuple[np.ndarray | None, str | None]:
    """An array named ``labels`` in an .npz ``data`` (unless the model reads an input of that
    name)."""
    if not (isinstance(data, str) and os.path.isfile(data)):
        return None, None
    if LABELS_KEY in user_inputs(model):
        return None, None
    try:
        with np.load(data, allow_pickle=False) as archive:
            if LABELS_KEY not in archive.files:
                return None, None
            value = archive[LABELS_KEY]
    except Exception:  # noqa: BLE001 - load_calibration reports an unreadable file
        return None, None
    return _as_ids(value, f"{data}[{LABELS_KEY}]"), f"{data}[{LABELS_KEY}]"


def _as_ids(value: np.ndarray, where: str) -> np.ndarray:
    if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
        raise UserError(f"{where}: labels must be a 1-D array of integer class ids, got "
                        f"{value.dtype} of shape {list(value.shape)}")
    if value.size and value.min() < 0:
        raise UserError(f"{where}: class ids must be 0 or more")
    return value.astype(np.int64)


def _fit_labels(labels: np.ndarray, count: int, model) -> np.ndarray:
    """One label per sample that was run. A model with a fixed batch runs only whole batches,
    so the labels of the samples left over are dropped too."""
    fixed = fixed_batch(model, user_inputs(model))
    if len(labels) == count or (fixed and len(labels) - len(labels) % fixed == count):
        return labels[:count]
    raise UserError(f"there are {len(labels)} labels for {count} samples")


def _scores_output(outputs: dict[str, list[np.ndarray]], count: int) -> str:
    """The first output that looks like class scores, one row per sample: the one labels are
    checked against."""
    for name, values in outputs.items():
        if all(v.ndim for v in values):
            scores = np.concatenate(values)
            if is_scores(scores) and len(scores) == count:
                return name
    raise UserError("labels need an output of class scores ([N, C] floats, C >= 2); "
                    "this model has none")


def _predict(values: list[np.ndarray], labels: np.ndarray, name: str) -> np.ndarray:
    scores = np.concatenate(values)
    if labels.max(initial=0) >= scores.shape[1]:
        raise UserError(f"class id {int(labels.max())} is out of range for output {name!r} "
                        f"with {scores.shape[1]} classes")
    return np.argmax(scores, axis=1)


def class_recall(labels: np.ndarray, predictions: np.ndarray) -> dict[int, float]:
    """Recall of every class that occurs in ``labels``: the share of its samples predicted as
    itself."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return {int(c): float(np.mean(predictions[labels == c] == c)) for c in np.unique(labels)}


def recall_distortion(labels, before, after) -> dict:
    """Accuracy and per-class recall before and after pruning, and the classes whose recall
    drops by MORE than the overall accuracy does: the ones pruning hurts beyond the average,
    which the average alone hides."""
    labels, before, after = (np.asarray(x) for x in (labels, before, after))
    if not (len(labels) == len(before) == len(after)) or not len(labels):
        raise UserError("labels and predictions must have the same, non-zero length")
    acc_before = float(np.mean(before == labels))
    acc_after = float(np.mean(after == labels))
    drop = acc_before - acc_after
    recall_b, recall_a = class_recall(labels, before), class_recall(labels, after)
    classes = []
    for c in recall_b:
        class_drop = recall_b[c] - recall_a[c]
        classes.append({"class": c, "support": int(np.sum(labels == c)),
                        "recall_before": recall_b[c], "recall_after": recall_a[c],
                        "drop": class_drop, "flagged": bool(class_drop > drop + 1e-12)})
    return {"accuracy_before": acc_before, "accuracy_after": acc_after, "accuracy_drop": drop,
            "classes": classes, "flagged": [c["class"] for c in classes if c["flagged"]]}
