"""Groups: channels that must be pruned together, found by propagating labels (see rules)."""

from .analysis import Analysis, ParamUse, analyze
from .grouping import Group, find_groups

__all__ = ["Analysis", "Group", "ParamUse", "analyze", "find_groups"]
