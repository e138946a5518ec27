"""Allocation: how many channels each group keeps, and which."""

from .ratio import GroupPlan, Plan, allocate

__all__ = ["GroupPlan", "Plan", "allocate"]
