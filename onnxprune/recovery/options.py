"""How recovery trains (``RecoverOptions``) and what it reports (``RecoverReport``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..errors import UserError

TRAIN = ("biases", "all")
LOSSES = ("auto", "mse", "kl")


@dataclass(frozen=True)
class RecoverOptions:
    """How recovery trains: ``budget`` seconds at most, ``train`` "biases" or "all", ``loss``
    per output ("auto": KL on probabilities, else scaled MSE), ``held_out`` share of samples
    kept for early stopping, ``lr`` (default 1e-3 for biases, 1e-4 for all), ``batch``
    samples per step (a model's fixed batch size wins), ``patience`` held-out evaluations
    without improvement before stopping, ``seed`` for the shuffles, ``samples`` drawn from a
    generated calibration source (real data is used whole), ``features``: the weight of the
    kept channels of thinned intermediate tensors in the training loss (0: outputs only; see
    ``features``; early stopping always reads the outputs alone)."""

    budget: float = 120.0
    train: str = "biases"
    loss: str = "auto"
    held_out: float = 0.25
    lr: float | None = None
    batch: int = 8
    patience: int = 20
    seed: int = 0
    samples: int = 128      # drawn from a generated --calib source (random, natural)
    features: float = 0.0

    def check(self) -> None:
        if self.train not in TRAIN:
            raise UserError(f"unknown --train {self.train!r}; choose one of {', '.join(TRAIN)}")
        if self.loss not in LOSSES:
            raise UserError(f"unknown --loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if not self.budget > 0:
            raise UserError(f"--budget must be positive seconds, got {self.budget}")
        if not 0.0 < self.held_out < 1.0:
            raise UserError(f"--held-out must be in (0, 1), got {self.held_out}")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not (self.features >= 0 and math.isfinite(self.features)):
            raise UserError(f"--features must be a weight >= 0, got {self.features}")
        if self.batch < 1 or self.patience < 1 or self.samples < 2:
            raise UserError("--batch and --patience must be at least 1, --samples at least 2")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.train == "biases" else 1e-4)


@dataclass
class RecoverReport:
    """What recovery did: the tensors and parameters it trained, how long and how far, the
    loss before and after on the training and held-out samples, and per output the loss kind
    and the held-out fidelity to the dense model before and after."""

    train: str
    tensors: int
    params: int
    samples: dict
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    stopped: str = ""
    loss: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    improved: bool = False
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
