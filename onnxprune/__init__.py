"""onnxprune: structural pruning of ONNX graphs.

    import onnxprune
    pruned, report = onnxprune.prune("model.onnx", ratio=0.5)
"""

from .api import Strategy, inspect, prune
from .errors import OnnxPruneError, UserError, VerificationError
from .io import release_weights, save_model

__all__ = ["OnnxPruneError", "Strategy", "UserError", "VerificationError", "inspect", "prune",
           "release_weights", "save_model"]
__version__ = "0.1.0"
