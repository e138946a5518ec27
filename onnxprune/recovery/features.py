"""Intermediate tensors as extra distillation targets: the kept channels of thinned tensors.

With a few dozen samples the outputs alone say little about each layer; matching the
intermediate tensors the pruned layers write (FitNets-style hints) gives every layer a target
of its own. Only what the plan kept can be compared: a thinned tensor's channel ``j`` in the
pruned model is channel ``kept[j]`` of the same tensor in the dense one, and the caller (the
pipeline, which knows the plan) says which. The teacher's values come from ONNX Runtime (the
dense model with those tensors as extra outputs), the student's from forward hooks on the
modules onnx2torch built from the nodes that write them. A tensor that no module writes
whole, or whose size does not match, is left out with a note.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..runtime import batch_outputs
from ..runtime.run import exposing

MAX_FEATURES = 16       # tensors matched at most, spread evenly through the graph


class FeatureTargets:
    """Teacher values of the kept channels of ``kept`` tensors ({name: (axis, indices)}) and
    the hooks that read the same tensors from the student module."""

    def __init__(self, dense: onnx.ModelProto, student, kept: dict, train, held, torch):
        self.torch, self.notes = torch, []
        writers = {out: (node.name, j) for node in student.onnx.graph.node
                   for j, out in enumerate(node.output)}
        names = [n for n in _in_graph_order(student.onnx, kept) if n in writers]
        if len(names) > MAX_FEATURES:
            pick = np.linspace(0, len(names) - 1, MAX_FEATURES).round().astype(int)
            self.notes.append(f"{MAX_FEATURES} of {len(names)} thinned tensors matched "
                              f"(spread through the graph)")
            names = [names[k] for k in sorted(set(pick))]
        self.kept = {n: kept[n] for n in names}
        self.seen: dict = {}
        self.hooks = []
        for name in list(self.kept):
            module_name, index = writers[name]
            try:
                module = student.module.get_submodule(module_name)
            except AttributeError:
                self.notes.append(f"{name}: no module writes it, not matched")
                del self.kept[name]
                continue
            self.hooks.append(module.register_forward_hook(self._reader(name, index)))
        probe = exposing(dense, list(self.kept))
        self.train = [self._slice(o) for o in batch_outputs(probe, train)]
        self.held = [self._slice(o) for o in batch_outputs(probe, held)]
        self.scales = {n: float(np.mean([np.mean(np.square(t[n], dtype=np.float64))
                                         for t in self.train]) or 1.0) for n in self.kept}

    def _reader(self, name: str, index: int):
        def hook(module, args, output):
            self.seen[name] = output[index] if isinstance(output, (tuple, list)) else output
        return hook

    def _slice(self, outputs: dict) -> dict:
        return {n: np.take(outputs[n], idx, axis=axis)
                for n, (axis, idx) in self.kept.items()}

    def loss(self, targets: dict):
        """Mean over tensors of the squared error scaled by the tensor's mean square; a tensor
        whose student value has another shape is dropped (once, with a note)."""
        torch, total, count = self.torch, 0.0, 0
        for name in list(self.kept):
            got = self.seen.get(name)
            want = targets[name]
            if got is None or tuple(got.shape) != want.shape:
                self.notes.append(f"{name}: shape {None if got is None else tuple(got.shape)} "
                                  f"in the pruned model, {want.shape} kept; not matched")
                del self.kept[name]
                continue
            total = total + torch.mean((got.double() - torch.from_numpy(want).double()) ** 2
                                       ) / self.scales[name]
            count += 1
        self.seen.clear()
        return total / count if count else total

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _in_graph_order(model: onnx.ModelProto, names) -> list[str]:
    wanted = set(names)
    return [out for node in model.graph.node for out in node.output if out in wanted]
