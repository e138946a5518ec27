"""onnxprune: structural pruning of ONNX graphs.

    import onnxprune
    pruned, report = onnxprune.prune("model.onnx", ratio=0.5)
"""

from .errors import OnnxPruneError, UserError, VerificationError
from .io import release_weights, save_model
from .pipeline import PruneOptions, Strategy, inspect, prune

__all__ = ["OnnxPruneError", "PruneOptions", "Strategy", "UserError", "VerificationError",
           "inspect", "prune", "release_weights", "save_model"]
__version__ = "0.1.0"
