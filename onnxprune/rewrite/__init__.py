"""Rewrite: apply a plan to a copy of the model, as a pruned model or as the masked original."""

from .apply import RewriteError, apply_plan, changed_io

__all__ = ["RewriteError", "apply_plan", "changed_io"]
