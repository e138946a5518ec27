"""Compensation: re-fit the layers that read removed channels, with no training loop."""

from .refit import METHODS, compensate, obs_inputs, obs_patches

__all__ = ["METHODS", "compensate", "obs_inputs", "obs_patches"]
