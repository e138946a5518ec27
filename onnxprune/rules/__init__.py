"""Per-op channel rules: one registry, one small rule per op family (see ``base``)."""

from . import (  # noqa: F401 - importing a module registers its rules
    concat_split,
    conv,
    einsum,
    elementwise,
    expand,
    fused,
    gather,
    gqa,
    integer,
    linear,
    nbits,
    normalization,
    qoperator,
    quantize,
    recurrent,
    rmsnorm,
    reshape,
    shape_of,
    skip_layernorm,
    spatial,
)
from .base import RULES, LinearView, Rule, TimedLayer, counts_macs, register, rule_for

__all__ = ["LinearView", "RULES", "Rule", "TimedLayer", "counts_macs", "register", "rule_for"]
