"""``prune``: a verified smaller model from a path or a ModelProto, never modifying it, in one
step (``once``) or several (``steps``)."""

from __future__ import annotations

import functools

import onnx

from ..errors import UserError
from ..io import load_model
from ..progress import StageClock
from ..runtime import count_cost
from ..verify import input_problem
from .analyze import Analyzed
from .depth import prune_depth
from .once import check_feeds, prune_step
from .options import PruneOptions
from .recover import recover_pruned
from .scoring import Scoring
from .steps import prune_in_steps


def blame_a_broken_input(function):
    """When pruning fails for a reason other than the user's options, look at the input
    model: if it is itself broken (fails the checker, cannot load on ONNX Runtime), that is the
    error to report, as the user's, rather than a failed rewrite or an internal error."""
    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        try:
            return function(model, *args, **kwargs)
        except UserError:
            raise
        except Exception:
            problem = _input_problem(model)
            if problem:
                raise UserError(problem) from None
            raise
    return wrapper


def _input_problem(model) -> str | None:
    try:
        return input_problem(model.model if isinstance(model, Analyzed) else load_model(model))
    except UserError as exc:
        return str(exc)


def options_of(options: PruneOptions | None, fields: dict) -> PruneOptions:
    """``options`` with ``fields`` (PruneOptions field names) replaced."""
    options = options or PruneOptions()
    try:
        return options.replace(**fields) if fields else options
    except TypeError as exc:
        raise TypeError(f"prune() got an unknown option: {exc}") from None


@blame_a_broken_input
def prune(model, options: PruneOptions | None = None, *, scoring: Scoring | None = None,
          progress=None, **fields) -> tuple[onnx.ModelProto, dict]:
    """Prune ``model`` (a path, a ModelProto, or an :class:`Analyzed` model whose analysis is
    reused) as ``options`` say, or as the :class:`PruneOptions` fields given by keyword say
    (``prune(path, ratio=0.3, strategy=Strategy("obspa"))``); return (model, report).

    With ``verify`` (the default) the result must pass the full checker, run on ONNX Runtime
    and match the masked original within ``tolerance``; otherwise VerificationError is raised
    and nothing is returned. ``scoring`` (from :func:`score_model` on the same analysed model
    and options) skips the capture and scoring: pruning one model at many ratios then pays for
    them once. ``progress``: see :mod:`onnxprune.progress`. With ``recover``, the verified
    pruned model is then trained to reproduce the dense one (the report's ``recovery``).
    The report's ``stages`` say how long each step took.
    """
    if "blocks" in fields and not fields.keys() & {"ratio", "heads", "mlp", "hidden"} and \
            options is None:
        fields["ratio"] = 0.0           # depth alone, unless a width ratio is asked for too
    options = options_of(options, fields).resolved()
    options.check()
    progress = StageClock(progress)
    kept, depth, dense = None, None, None
    if options.blocks is not None:
        if scoring is not None or isinstance(model, Analyzed):
            raise UserError("--blocks changes the model before it is analysed: give a path "
                            "or a ModelProto, without scoring")
        dense = load_model(model)
        model, depth = prune_depth(dense, options, check_feeds, progress)
    if options.steps != 1:
        if scoring is not None:
            raise UserError("steps re-score the model after each step; drop scoring")
        pruned, report = prune_in_steps(model, options, progress)
    else:
        pruned, record = prune_step(model, options, scoring, progress, dense)
        report, kept = record.to_dict(), record.kept_channels
    if depth is not None:
        _with_depth(report, depth, dense, options)
    if options.recover is not None and not report.get("nothing_pruned"):
        if dense is None:
            dense = model.model if isinstance(model, Analyzed) else model
        pruned, report["recovery"] = recover_pruned(dense, pruned, options.calib,
                                                    options.recover, options.input_shapes,
                                                    progress, kept)
    report["stages"] = progress.stages
    return pruned, report


def _with_depth(report: dict, depth: dict, dense: onnx.ModelProto, options) -> None:
    """The report of width pruning on the shallower model, told from the dense model: its
    params and MACs before, the blocks removed, and something pruned (the fidelity is
    already measured against it)."""
    report["depth"] = depth
    before = count_cost(dense, options.input_shapes)
    report["params"]["before"], report["macs"]["before"] = before.params, before.macs
    report["nothing_pruned"] = None
