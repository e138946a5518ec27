"""Why a check failed. Where it starts: the first tensor, in the order the graph computes
them, at which the pruned model leaves the masked original (the pruned model's tensors hold
the kept channels only, so the masked original's are cut to them before the two are
compared). Or whose fault it is: when the *dense* model cannot run on the check inputs either,
the inputs are wrong for this model, not the rewrite."""

from __future__ import annotations

import re

import networkx as nx
import numpy as np
import onnx

from ..errors import one_line
from ..groups import project
from ..runtime import run_model
from ..runtime.run import exposing, sliced
from ..verify import relative_error
from .analyze import Analyzed


def first_divergence(a: Analyzed, pruned: onnx.ModelProto, masked: onnx.ModelProto, feeds,
                     removed: np.ndarray, tolerance: float, io: dict | None = None
                     ) -> tuple[str, str, float] | None:
    """(node label, tensor, relative error) where the error first exceeds ``tolerance``, or
    None when no tensor both models compute can be compared (or none diverges). ``io``:
    resized inputs (see ``runtime.sliced``)."""
    written = {o for n in pruned.graph.node for o in n.output} & \
        {o for n in masked.graph.node for o in n.output}
    order = [(node, name) for node in a.graph.order for name in node.proto.output
             if name in written]
    names = [name for _, name in order]
    try:
        got = run_model(exposing(pruned, names), sliced(feeds, io), exact=True)
        want = run_model(exposing(masked, names), feeds, exact=True)
    except Exception:  # noqa: BLE001 - a diagnosis must never hide the failure it explains
        return None
    for node, name in order:
        if name not in got or name not in want:
            continue
        expected = _kept_part(a, name, want[name], removed)
        if expected is None or expected.shape != got[name].shape:
            continue
        error = relative_error(got[name], expected)
        if error > tolerance:
            return node.label, name, error
    return None


def _kept_part(a: Analyzed, name: str, value: np.ndarray, removed: np.ndarray):
    """The masked original's tensor cut to the channels the pruned model keeps."""
    cmap = a.analysis.map(name)
    if cmap is None or cmap.tiled:
        return value if cmap is None else None
    for axis, keep in zip(cmap.axes, project(~removed[cmap.labels])):
        if value.shape[axis] != keep.size:
            return None
        value = np.compress(keep, value, axis=axis)
    return value


def dense_failure(a: Analyzed, feeds: dict, what: str) -> str | None:
    """A one-line error when the dense model itself cannot run on ``feeds`` (described by
    ``what``): the failing node as ONNX Runtime names it and the model inputs it depends on."""
    try:
        run_model(a.model, feeds)
        return None
    except Exception as exc:  # noqa: BLE001 - whatever ORT refuses
        text = str(exc)
    where = ""
    found = re.search(r"Name:'([^']+)'", text)
    node = next((n for n in a.graph.nodes if found and n.proto.name == found.group(1)), None)
    if node is not None:
        upstream = nx.ancestors(a.graph.dag, node.index)
        inputs = [n for n in feeds if n in upstream]
        where = f" at {node.label}" + (
            f", which depends on input {', '.join(repr(n) for n in inputs)}" if inputs else "")
    message = text.split("Status Message:")[-1]
    return (f"the dense model itself cannot run on {what}{where} ({one_line(message, 160)}); "
            f"give inputs it runs on with --check-data FILE.npz (one array per model input)")
