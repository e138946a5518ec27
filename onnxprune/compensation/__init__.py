"""Compensation: re-fit the layers that read removed channels, with no training loop."""

from .refit import DAMPING, METHODS, compensate, obs_inputs, obs_patches

__all__ = ["DAMPING", "METHODS", "compensate", "obs_inputs", "obs_patches"]
