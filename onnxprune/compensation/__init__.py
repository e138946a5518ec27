"""Compensation: re-fit the layers that read removed channels, with no training loop."""

from .methods import METHODS, compensate

__all__ = ["METHODS", "compensate"]
