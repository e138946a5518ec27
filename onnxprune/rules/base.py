"""What a per-op channel rule is, and the registry that maps op types to rules.

A rule does two things for its op type:

* ``propagate(node, ctx)`` runs once per node in topological order. It reads the
  :class:`~onnxprune.graph.ChannelMap` of the node's inputs and sets those of its outputs, draws
  new atoms where the op creates channels from weights, unifies atoms that must be pruned
  together, and declares each constant it will slice with ``ctx.param``. A configuration it
  does not understand ends in ``ctx.barrier(node, reason)``: the channels reaching the node are
  frozen, which makes the tool prune less rather than guess.
* ``rewrite(node, ctx)`` runs after the plan is fixed, only for nodes whose ``propagate``
  called ``ctx.note``. Declared constants are sliced for it; ``rewrite`` only updates what is
  not a sliced constant: attributes such as ``group``, split sizes, shape constants.

To support a new op, add one small rule class in the module of its family and decorate it with
``@register("OpType", ...)``: no other part of the tool needs to change.
"""

from __future__ import annotations

from typing import Callable

RULES: dict[str, "Rule"] = {}


class Rule:
    """Base class: the default rewrite changes nothing beyond the declared constants.

    ``follows_tiled``: the rule understands maps with tiled axes (heads merged with the batch,
    see ``ChannelMap``); for every other rule such an input is a barrier.
    """

    follows_tiled = False

    def propagate(self, node, ctx) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def rewrite(self, node, ctx) -> None:
        return None


def register(*op_types: str) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator: one instance of the rule serves every listed op type."""

    def wrap(cls: type[Rule]) -> type[Rule]:
        instance = cls()
        for op in op_types:
            if op in RULES:
                raise ValueError(f"two rules for {op}")
            RULES[op] = instance
        return cls

    return wrap


RULE_DOMAINS = ("com.microsoft",)  # other domains with rules, keyed "domain:OpType"


def rule_for(node) -> Rule | None:
    """The rule of a node's op, or None (a barrier). Default-domain ops are keyed by their op
    type; ``com.microsoft`` ops by "com.microsoft:OpType" (see ``fused``)."""
    domain = node.proto.domain
    if domain in ("", "ai.onnx"):
        return RULES.get(node.op)
    if domain in RULE_DOMAINS:
        return RULES.get(f"{domain}:{node.op}")
    return None


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis
