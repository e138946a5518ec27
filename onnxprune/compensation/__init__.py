"""Compensation: re-fit the layers that read removed channels, with no training loop."""

from .refit import METHODS, compensate

__all__ = ["METHODS", "compensate"]
