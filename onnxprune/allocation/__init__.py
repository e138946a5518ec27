"""Allocation: how many channels each group keeps, and which."""

from .ratio import ALLOCATIONS, GroupPlan, Plan, allocate

__all__ = ["ALLOCATIONS", "GroupPlan", "Plan", "allocate"]
