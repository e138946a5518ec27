"""Pipeline: everything a prune does, in order, on top of the layers below. Options
(``options``), analysis (``analyze``), scoring once per model (``scoring``), plans and their
cost (``plan``), candidates (``build``), targets (``targets``), one verified prune (``once``),
steps (``steps``), the report (``report``), and the read-only reports ``inspect`` and
``sensitivity``. ``prune`` is the entry point."""

from .analyze import Analyzed, analyze_model
from .build import masked_original
from .inspect import inspect, sensitivity
from .options import DEFAULT_ROUND_TO, PruneOptions, Strategy
from .prune import prune
from .scoring import Scoring, calibration_stats, score_model

__all__ = ["Analyzed", "DEFAULT_ROUND_TO", "PruneOptions", "Scoring", "Strategy",
           "analyze_model", "calibration_stats", "inspect", "masked_original", "prune",
           "score_model", "sensitivity"]
