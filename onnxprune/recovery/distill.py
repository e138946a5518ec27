"""Recovery by distillation: the dense model teaches the pruned one on unlabeled inputs.

The pruned model is converted to PyTorch by onnx2torch (the ``grad`` extra, as the gradient
criteria are) and must first reproduce ONNX Runtime's outputs. The dense model's outputs on
the calibration inputs are the targets: per output, KL divergence where the dense output is a
probability vector (non-negative, rows summing to 1), else the squared error scaled by the
output's mean square (per channel, on axis 1, for outputs of rank 3 or more), so outputs and
channels of any scale weigh the same. With ``features`` the kept channels of the thinned
tensors the pruned layers write are targets too (``features.py``; the plan says which). Only
initializer values change:
``train="biases"`` trains the vector constants (biases, normalization scales and shifts,
per-channel constants: few parameters, little over-fitting on few samples, as PERP finds),
``"all"`` every float constant the conversion maps back. A share of the samples is held out:
the state with the lowest held-out loss is kept, training stops after ``patience``
evaluations without a better one or when the time budget is spent, and when nothing beat the
starting point the pruned model is returned as it was.

The trained values are written back into a copy of the pruned model in ONNX layout; nothing
else in the graph changes. The copy must pass the full checker, run on ONNX Runtime with the
same inputs and outputs, and reproduce the trained module's outputs.
"""

from __future__ import annotations

import math
import time

import numpy as np
import onnx
from onnx import numpy_helper

from ..calibration import fixed_batch
from ..errors import UserError, VerificationError, one_line
from ..graph import ModelGraph
from ..progress import task
from ..runtime import batch_outputs, run_model, user_inputs
from ..runtime.fidelity import is_probabilities, output_fidelity
from ..runtime.torch_module import AGREEMENT, Purpose, TorchModel, reported, require_torch
from ..verify import check_model, relative_error
from .features import FeatureTargets
from .options import RecoverOptions, RecoverReport

RECOVERY = Purpose("recover", "prune without --recover, or give a model onnx2torch converts")


def recover(dense: onnx.ModelProto, pruned: onnx.ModelProto, batches,
            options: RecoverOptions | None = None, progress=None, kept: dict | None = None
            ) -> tuple[onnx.ModelProto, RecoverReport]:
    """``pruned`` with its initializers trained to reproduce ``dense`` on ``batches`` (feed
    dicts of unlabeled inputs), and what happened. ``kept``: {tensor: (axis, indices of the
    dense channels the pruned tensor holds)}, what ``options.features`` matches."""
    options = options or RecoverOptions()
    options.check()
    run = Distillation(dense, pruned, batches, options, kept)
    run.train(progress)
    return run.result()


class Distillation:
    """One recovery run: the data split, the teacher's targets, the student module."""

    def __init__(self, dense: onnx.ModelProto, pruned: onnx.ModelProto, batches,
                 options: RecoverOptions, kept: dict | None = None):
        self.torch = require_torch(RECOVERY)
        if options.features > 0 and not kept:
            raise UserError("recover: --recover-features matches the channels the plan kept, "
                            "which only the prune that made the model knows: use prune "
                            "--recover --recover-features W")
        self.options, self.dense, self.pruned = options, dense, pruned
        names = user_inputs(pruned)
        if names != user_inputs(dense):
            raise UserError("the pruned model's inputs differ from the dense model's")
        train, held = _split(batches, names, fixed_batch(pruned, names) or options.batch,
                             options.held_out, options.seed)
        self.train_batches, self.held_batches = train, held
        self.outputs = [o.name for o in pruned.graph.output]
        self.targets = [_float_outputs(o) for o in batch_outputs(dense, train)]
        self.held_targets = [_float_outputs(o) for o in batch_outputs(dense, held)]
        self.kinds = {name: _loss_kind(options.loss, [t[name] for t in self.targets])
                      for name in self.targets[0]}
        self.scales = {name: _mean_square([t[name] for t in self.targets])
                       for name in self.targets[0]}
        graph = ModelGraph(pruned, infer_shapes=True)
        floats = {t.name for t in pruned.graph.initializer
                  if t.data_type == onnx.TensorProto.FLOAT}
        floats |= {n.output[0] for n in pruned.graph.node if n.op_type == "Constant"
                   and graph.const(n.output[0]) is not None
                   and graph.const(n.output[0]).dtype == np.float32}
        self.student = TorchModel(pruned, graph, floats, RECOVERY)
        self.student.check_against_ort(train[0])
        self.trained, shared = self._choose(graph)
        self.report = RecoverReport(
            options.train, len(self.trained),
            int(sum(t.numel() for t in self.trained.values())),
            {"train": _count(train), "held_out": _count(held)})
        if shared:
            self.report.notes.append(f"{len(shared)} constant(s) read by several nodes are not "
                                     f"trained (e.g. {sorted(shared)[0]})")
        if not self.trained:
            raise UserError(f"recover: nothing to train with --train {options.train} in this "
                            f"model (no float constant maps back from the PyTorch module)")
        self.features = (FeatureTargets(dense, self.student, kept, train, held, self.torch)
                         if options.features > 0 else None)

    def _choose(self, graph) -> tuple[dict, set]:
        """{initializer: torch tensor} to train, and the names skipped as shared."""
        chosen, shared = {}, set()
        for name, pairs in self.student.values.items():
            if self.student.onnx_value(name) is None:
                shared.add(name)
                continue
            tensor = pairs[0][0]
            vector = sum(d > 1 for d in tensor.shape) <= 1
            if self.options.train == "all" or vector:
                chosen[name] = tensor
        return chosen, shared

    # -- training ------------------------------------------------------------------------
    def _loss(self, outputs, targets) -> object:
        torch = self.torch
        total = 0.0
        for name, got in zip(self.outputs, outputs):
            if name not in targets:
                continue
            want = torch.from_numpy(targets[name]).double()
            got = got.double()
            if self.kinds[name] == "kl":
                total = total + torch.sum(want * (torch.log(want.clamp_min(1e-12))
                                                  - torch.log(got.clamp_min(1e-12)))) / len(want)
            else:
                total = total + torch.mean((got - want) ** 2 / self.scales[name])
        return total

    def _evaluate(self, batches, targets) -> float:
        torch = self.torch
        with torch.no_grad():
            values = [float(self._loss(self.student.forward(f), t))
                      for f, t in zip(batches, targets)]
        return float(np.mean(values))

    def train(self, progress=None) -> None:
        torch, options = self.torch, self.options
        for tensor in self.student.module.parameters():
            tensor.requires_grad_(False)
        for tensor in self.trained.values():
            tensor.requires_grad_(True)
        optimizer = torch.optim.Adam(list(self.trained.values()), lr=options.learning_rate)
        rng = np.random.default_rng(options.seed)
        start = time.perf_counter()
        with reported("train", RECOVERY):
            before = (self._evaluate(self.train_batches, self.targets),
                      self._evaluate(self.held_batches, self.held_targets))
        best, best_state, waited = before[1], self._state(), 0
        self.report.loss = {"train_before": before[0], "held_out_before": before[1]}
        stopped = "time budget"
        with task(progress, f"recovering by distillation ({options.budget:g} s budget)",
                  int(options.budget)) as step, reported("train", RECOVERY):
            shown = 0
            while time.perf_counter() - start < options.budget:
                for k in rng.permutation(len(self.train_batches)):
                    optimizer.zero_grad()
                    loss = self._loss(self.student.forward(self.train_batches[k]),
                                      self.targets[k])
                    if self.features is not None:
                        loss = loss + options.features * self.features.loss(
                            self.features.train[k])
                    loss.backward()
                    optimizer.step()
                    self.report.steps += 1
                    if time.perf_counter() - start >= options.budget:
                        break
                self.report.epochs += 1
                held = self._evaluate(self.held_batches, self.held_targets)
                if held < best:
                    best, best_state, waited = held, self._state(), 0
                else:
                    waited += 1
                for _ in range(int(time.perf_counter() - start) - shown):
                    step()
                shown = int(time.perf_counter() - start)
                if waited >= options.patience:
                    stopped = f"no better held-out loss in {options.patience} epochs"
                    break
        self._restore(best_state)
        if self.features is not None:
            self.features.close()
            self.report.notes.append(f"intermediate tensors matched: {len(self.features.kept)} "
                                     f"(weight {options.features:g})")
            self.report.notes.extend(self.features.notes)
        self.report.seconds = time.perf_counter() - start
        self.report.stopped = stopped
        self.report.improved = best < before[1]
        self.report.loss.update(
            train_after=self._evaluate(self.train_batches, self.targets),
            held_out_after=best)

    def _state(self) -> dict:
        return {name: t.detach().clone() for name, t in self.trained.items()}

    def _restore(self, state: dict) -> None:
        with self.torch.no_grad():
            for name, tensor in self.trained.items():
                tensor.copy_(state[name])

    # -- writing back --------------------------------------------------------------------
    def result(self) -> tuple[onnx.ModelProto, RecoverReport]:
        """The recovered model (the pruned one when nothing improved), checked."""
        if not self.report.improved:
            self.report.notes.append("no state beat the pruned model on the held-out samples: "
                                     "returned unchanged")
            out = self.pruned
        else:
            out = self.written()
            self._check(out)
        self.report.outputs = self._fidelity(out)
        return out, self.report

    def written(self) -> onnx.ModelProto:
        """A copy of the pruned model whose trained constants hold the trained values."""
        out = onnx.ModelProto()
        out.CopyFrom(self.pruned)
        inits = {t.name: t for t in out.graph.initializer}
        constants = {n.output[0]: n for n in out.graph.node if n.op_type == "Constant"}
        for name in self.trained:
            value = self.student.onnx_value(name)
            if name in inits:
                old = inits[name]
                fresh = numpy_helper.from_array(
                    value.reshape(tuple(old.dims)).astype(np.float32), name)
                old.ClearField("raw_data")
                old.ClearField("float_data")
                old.ClearField("external_data")
                old.data_location = onnx.TensorProto.DEFAULT
                old.raw_data = fresh.raw_data
            elif name in constants:
                attr = next(a for a in constants[name].attribute if a.name == "value")
                shape = tuple(attr.t.dims)
                attr.t.CopyFrom(numpy_helper.from_array(
                    value.reshape(shape).astype(np.float32), attr.t.name))
        return out

    def _check(self, model: onnx.ModelProto) -> None:
        """Full checker, same IO, and ONNX Runtime computes what the trained module computes."""
        torch = self.torch
        feeds = self.held_batches[0]
        problem = None
        try:
            check_model(model)
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            problem = f"checker: {one_line(str(exc), 200)}"
        if problem is None and (user_inputs(model) != user_inputs(self.pruned) or [
                o.name for o in model.graph.output] != self.outputs):
            problem = "inputs or outputs changed"
        if problem is None:
            with torch.no_grad():
                want = [t.numpy() for t in self.student.forward(feeds)]
            got = run_model(model, feeds)
            error = max((relative_error(got[n], w) for n, w in zip(self.outputs, want)
                         if np.issubdtype(w.dtype, np.floating)), default=0.0)
            if not error <= AGREEMENT:
                problem = (f"ONNX Runtime differs from the trained module by {error:.2e} "
                           f"(relative)")
        if problem:
            raise VerificationError(f"the recovered model failed its check ({problem}); "
                                    f"nothing was written")

    def _fidelity(self, model) -> list[dict]:
        """Per output: its loss kind, and the held-out fidelity to the dense model before and
        after recovery."""
        sizes = [_count([f]) for f in self.held_batches]
        before = batch_outputs(self.pruned, self.held_batches)
        after = before if model is self.pruned else batch_outputs(model, self.held_batches)
        rows = []
        for name in self.kinds:
            want = [t[name] for t in self.held_targets]
            row = {"name": name, "loss": self.kinds[name]}
            for label, got in (("before", before), ("after", after)):
                f = output_fidelity(name, want, [g[name] for g in got], sizes)
                row[f"cosine_{label}"] = f["cosine_mean"]
                row[f"top1_{label}"] = f["top1_agreement"]
            rows.append(row)
        return rows


def _split(batches, names, size: int, share: float, seed: int) -> tuple[list, list]:
    """Samples regrouped into batches of ``size``, shuffled, the last ``share`` held out
    (at least one batch each); samples that do not fill a batch are left out."""
    samples = [{n: feeds[n][i:i + 1] for n in names}
               for feeds in batches for i in range(len(feeds[names[0]]))]
    order = np.random.default_rng(seed).permutation(len(samples))
    grouped = [{n: np.concatenate([samples[j][n] for j in order[k:k + size]]) for n in names}
               for k in range(0, len(order) - size + 1, size)]
    if len(grouped) < 2:
        raise UserError(f"recover needs at least {2 * size} calibration samples (batches of "
                        f"{size}: one to train on, one held out); got {len(samples)}")
    held = max(1, int(math.floor(len(grouped) * share)))
    return grouped[:-held], grouped[-held:]


def _count(batches) -> int:
    return sum(len(next(iter(f.values()))) for f in batches)


def _float_outputs(outputs: dict) -> dict:
    return {n: v for n, v in outputs.items() if np.issubdtype(v.dtype, np.floating)}


def _mean_square(values: list[np.ndarray]):
    """What the squared error of an output is divided by: its mean square over the training
    targets, per channel (axis 1) for outputs of rank 3 or more, so that a detection head's
    class scores (0–1) weigh as much as its box coordinates (hundreds of pixels)."""
    torch = require_torch(RECOVERY)
    first = values[0]
    if first.ndim >= 3:
        axes = tuple(a for a in range(first.ndim) if a != 1)
        per = np.mean([np.mean(np.square(v.astype(np.float64)), axis=axes) for v in values], 0)
        shape = (1, -1) + (1,) * (first.ndim - 2)
        scale = np.where(per > 0, per, 1.0).reshape(shape)
    else:
        scale = np.array(np.mean([np.mean(np.square(v.astype(np.float64))) for v in values])
                         or 1.0)
    return torch.from_numpy(scale)


def _loss_kind(choice: str, values: list[np.ndarray]) -> str:
    if choice != "auto":
        return choice
    if all(is_probabilities(v) for v in values):
        return "kl"
    return "mse"
