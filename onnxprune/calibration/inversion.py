"""Model inversion: data-free calibration inputs that the model itself finds typical.

Noise and even procedural images reach a BN-folded model's layers with statistics far from
those of its training data, and OBS then scores and re-fits for the wrong inputs. Inversion
starts from dead-leaves images (``natural``) and optimizes them, through the model run in
PyTorch (the ``grad`` extra), towards inputs the network treats as real:

* a class-score output (``[N, K]``, logits or probabilities) must be confident in a class
  assigned to each sample, classes spread evenly over the batch (DAFL's one-hot loss, Chen et
  al. 2019; DeepInversion's class loss, Yin et al. 2020): the trained decision regions are
  visited instead of one corner of input space;
* every BatchNormalization node still in the model must see the mean and variance it keeps
  (DeepInversion's feature-statistics loss);
* image inputs stay smooth (total variation, a natural-image prior) and in the value range of
  the images they started from.

A model with neither a class-score output nor a BatchNormalization node gives inversion
nothing to match; it is refused in one line rather than returned as "inverted" dead leaves.
Optimization stops after ``STEPS`` steps or when the time ``BUDGET`` runs out, whichever comes
first; the model's weights never change.
"""

from __future__ import annotations

import time

import numpy as np
import onnx

from ..errors import UserError
from ..graph import ModelGraph
from ..progress import task
from ..runtime.fidelity import is_probabilities, is_scores
from ..runtime.torch_module import Purpose, TorchModel, reported, require_torch

INVERSION = Purpose("--calib inverted", "use --calib natural or random, or give real samples")
STEPS = 200             # Adam steps per batch
LEARNING_RATE = 0.05    # in the units of the (normalized) input
SMOOTHNESS = 1.0        # weight of the total variation of image inputs
STATISTICS = 1.0        # weight of the BatchNormalization mean/variance match
BUDGET = 120.0          # seconds for all batches together


def invert(model: onnx.ModelProto, batches: list[dict], seed: int = 0,
           progress=None) -> list[dict]:
    """``batches`` (dead-leaves images, random values elsewhere) optimized into inputs the
    model treats as real; integer inputs are kept as they are."""
    torch = require_torch(INVERSION)
    free = [n for n, v in batches[0].items() if np.issubdtype(v.dtype, np.floating)]
    if not free:
        raise UserError("--calib inverted: the model has no float input to optimize (token ids "
                        "are not differentiable); use --calib random or give real samples")
    tm = TorchModel(model, ModelGraph(model, infer_shapes=False), set(), INVERSION)
    tm.check_against_ort(batches[0])
    for tensor in list(tm.module.parameters()) + list(tm.module.buffers()):
        tensor.requires_grad_(False)
    objective = _Objective(tm, batches[0], torch)
    rng = np.random.default_rng(seed)
    deadline = time.perf_counter() + BUDGET
    out = []
    try:
        with task(progress, "inverting the model into calibration inputs",
                  len(batches)) as step, reported("invert", INVERSION):
            for k, feeds in enumerate(batches):
                share = (deadline - time.perf_counter()) / (len(batches) - k)
                out.append(_invert_batch(tm, objective, feeds, free, rng, share, torch))
                step()
    finally:
        objective.close()
    return out


class _Objective:
    """What "typical" means for this model: its class-score output and its BN nodes."""

    def __init__(self, tm: TorchModel, feeds: dict, torch):
        self.torch = torch
        with torch.no_grad():
            outputs = [t.numpy() for t in tm.forward(feeds)]
        self.scores = next((i for i, v in enumerate(outputs) if is_scores(v)), None)
        self.probabilities = False
        if self.scores is not None:
            self.probabilities = is_probabilities(outputs[self.scores])
            self.classes = int(outputs[self.scores].shape[1])
        self.norms = [m for m in tm.module.modules()
                      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                      and m.running_mean is not None]
        if self.scores is None and not self.norms:
            raise UserError("--calib inverted: the model has neither a class-score output "
                            "([N, classes]) nor a BatchNormalization node to invert; use --calib "
                            "natural or random, or give real samples")
        self.seen: list = []
        self.hooks = [m.register_forward_pre_hook(self._record) for m in self.norms]

    def _record(self, module, args) -> None:
        self.seen.append((module, args[0]))

    def loss(self, outputs: list, targets):
        torch = self.torch
        total = outputs[0].new_zeros(())
        if self.scores is not None:
            scores = outputs[self.scores].double()
            logp = (torch.log(scores.clamp_min(1e-12)) if self.probabilities
                    else torch.log_softmax(scores, dim=1))
            total = total + torch.nn.functional.nll_loss(logp, targets)
        if self.seen:
            matched = 0.0
            for module, x in self.seen:
                axes = [0] + list(range(2, x.ndim))
                mean, var = x.mean(axes), x.var(axes, unbiased=False)
                matched = matched + (torch.linalg.norm(mean - module.running_mean)
                                     + torch.linalg.norm(var - module.running_var)) / \
                    (1.0 + torch.linalg.norm(module.running_var))
            total = total + STATISTICS * matched / len(self.seen)
        self.seen.clear()
        return total

    def targets(self, count: int, rng: np.random.Generator):
        """A class for each sample: consecutive classes from a random one, shuffled."""
        if self.scores is None:
            return None
        labels = (np.arange(count) + rng.integers(self.classes)) % self.classes
        return self.torch.from_numpy(rng.permutation(labels)).long()

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _invert_batch(tm: TorchModel, objective: _Objective, feeds: dict, free: list[str],
                  rng: np.random.Generator, seconds: float, torch) -> dict:
    count = len(feeds[free[0]])
    targets = objective.targets(count, rng)
    values = {n: torch.tensor(feeds[n], requires_grad=True) for n in free}
    low = {n: float(feeds[n].min()) for n in free}
    high = {n: float(feeds[n].max()) for n in free}
    optimizer = torch.optim.Adam(list(values.values()), lr=LEARNING_RATE)
    stop = time.perf_counter() + max(seconds, 0.0)
    for _ in range(STEPS):
        loss = objective.loss(tm.forward({**feeds, **values}), targets)
        for x in values.values():
            if x.ndim == 4:
                loss = loss + SMOOTHNESS * _total_variation(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for n, x in values.items():
                x.clamp_(low[n], high[n])
        if time.perf_counter() > stop:
            break
    made = dict(feeds)
    for n, x in values.items():
        made[n] = x.detach().numpy().astype(feeds[n].dtype)
    return made


def _total_variation(x):
    """Mean absolute difference of neighbouring pixels (both spatial axes)."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
            + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())
