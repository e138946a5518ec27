"""Recovery: after pruning, train what is left to reproduce the dense model (distillation
through PyTorch, the ``grad`` extra); only initializer values change."""

from .distill import LOSSES, TRAIN, RecoverOptions, RecoverReport, recover

__all__ = ["LOSSES", "TRAIN", "RecoverOptions", "RecoverReport", "recover"]
