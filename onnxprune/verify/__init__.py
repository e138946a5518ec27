"""Verification: the proof that a rewritten model is right. The full ONNX checker, an ONNX
Runtime run with the original's inputs and outputs, and equivalence with the masked original
channel by channel; and why an input model is itself unusable."""

from .checks import (CheckResult, check_model, compare_outputs, input_problem,
                     relative_error, unknown_ops)

__all__ = ["CheckResult", "check_model", "compare_outputs", "input_problem", "relative_error",
           "unknown_ops"]
