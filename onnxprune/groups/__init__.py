"""Groups: channels that must be pruned together, found by propagating labels (see rules);
the linear layers that read them; what a plan keeps of each constant."""

from .analysis import Analysis, ParamUse, RuleError, analyze
from .consumers import Consumer, find_consumers, reads_linearly
from .grouping import Group, find_groups
from .masks import RewriteError, kept_mask, masked_value, project

__all__ = ["Analysis", "Consumer", "Group", "ParamUse", "RewriteError", "RuleError", "analyze",
           "find_consumers", "find_groups", "kept_mask", "masked_value", "project",
           "reads_linearly"]
