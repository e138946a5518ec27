"""Recovery: after pruning, train what is left to reproduce the dense model (distillation
through PyTorch, the ``grad`` extra); only initializer values change."""

from .distill import recover
from .options import LOSSES, TRAIN, RecoverOptions, RecoverReport

__all__ = ["LOSSES", "TRAIN", "RecoverOptions", "RecoverReport", "recover"]
