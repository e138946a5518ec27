"""Importance: one score per component, computed in the group's own coordinates."""

from .magnitude import l2_magnitude

__all__ = ["l2_magnitude"]
