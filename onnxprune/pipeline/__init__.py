"""Pipeline: everything a prune does, in order, on top of the layers below. Options
(``options``), analysis (``analyze``), scoring once per model (``scoring``), plans and their
cost (``plan``), candidates (``build``), targets (``targets``), one verified prune (``once``),
steps (``steps``), the report (``report``), deployed folders (``deployed``: an updated
``genai_config.json``), and the read-only reports ``inspect`` and ``sensitivity``. ``prune`` is the entry point."""

from .analyze import Analyzed, analyze_model
from .build import masked_original
from .deployed import genai_config_for, write_genai_folder
from .inspect import inspect, sensitivity
from .options import DEFAULT_ROUND_TO, PruneOptions, Strategy
from .prune import prune
from .report import CHECKED_FROM_FILES
from .scoring import Scoring, calibration_stats, score_model

__all__ = ["Analyzed", "CHECKED_FROM_FILES", "DEFAULT_ROUND_TO", "PruneOptions", "Scoring",
           "Strategy",
           "analyze_model", "calibration_stats", "genai_config_for", "inspect",
           "masked_original", "prune", "score_model", "sensitivity", "write_genai_folder"]
