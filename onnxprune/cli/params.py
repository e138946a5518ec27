"""Command-line parameters: click types for what users type (shapes, ratio lists, batch
lists), the pruning options ``prune`` and ``sweep`` share (defined once, so flags, defaults
and help stay the same), and the ``PruneOptions`` they build."""

from __future__ import annotations

import math
import os

import click
from click.core import ParameterSource

from ..calibration import DAMPING, parse_source
from ..compensation import METHODS
from ..errors import UserError
from ..evaluate.sweep import parse_ratios
from ..importance import CRITERIA, NORMALIZATIONS, REDUCTIONS
from ..parallel import EXECUTORS, make_executor
from ..pipeline import DEFAULT_ROUND_TO, PruneOptions, Strategy
from ..pipeline.options import DEFAULT_TOLERANCE, RANKINGS, STRATEGY_ALLOCATIONS


class ShapeType(click.ParamType):
    """``name:1x3x224x224`` → (name, (1, 3, 224, 224))."""

    name = "NAME:D1xD2x..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        name, sep, dims = str(value).rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            self.fail(f"expects NAME:D1xD2x..., got {value!r}", param, ctx)
        return name, shape


class NumberListType(click.ParamType):
    """A comma list of numbers (``0.25,0.5``, or ``1,8,32`` with ``integers``)."""

    def __init__(self, integers: bool = False):
        self.integers = integers
        self.name = "N[,N...]" if integers else "X[,X...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        kind = int if self.integers else float
        try:
            values = tuple(kind(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"expects numbers like {'1,8' if self.integers else '0.25,0.5'}, got "
                      f"{value!r}", param, ctx)
        if not all(math.isfinite(v) for v in values):
            self.fail(f"expects finite numbers, got {value!r}", param, ctx)
        return values


class RatiosType(click.ParamType):
    """``START:STOP:STEP`` (the stop included) or a comma list, each in [0, 1)."""

    name = "START:STOP:STEP"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return parse_ratios(value)
        except UserError as exc:
            self.fail(str(exc), param, ctx)


SHAPE = ShapeType()


def shapes_of(values) -> dict[str, tuple[int, ...]] | None:
    return dict(values) or None


def calib_sources(values, preprocess):
    """--calib values (PATH or PATH@WEIGHT, repeatable) as calibration sources, or None."""
    if not values:
        if preprocess:
            raise UserError("--preprocess goes with --calib IMAGE_FOLDER")
        return None
    return [parse_source(v, preprocess) for v in values]


def choice(values) -> click.Choice:
    return click.Choice(sorted(values) if isinstance(values, dict) else list(values))


shape_option = click.option("--input-shape", "input_shape", type=SHAPE, multiple=True,
                            metavar="NAME:1x3x224x224",
                            help="Concrete input shape for checks and MACs (dynamic dims).")


def preprocess_option(what: str = "a --calib folder"):
    return click.option(
        "--preprocess", default=None, metavar="SPEC",
        help=f"How images of {what} become inputs, e.g. 'resize=256 crop=224 "
             "mean=0.485,0.456,0.406 std=0.229,0.224,0.225' (keys: resize, crop, scale, "
             "mean, std, color, layout), or a .json file with those keys.")


def executor_options(f):
    """Where one-per-item measurements run (``onnxprune.parallel``)."""
    decorators = [
        click.option("--executor", type=choice(EXECUTORS), default="local",
                     show_default=True,
                     help="Run the many independent measurements (distortion scores, "
                          "sensitivity, a sweep's ratios) in local worker processes or as "
                          "Ray tasks (needs the distributed extra)."),
        click.option("--workers", type=int, default=1, show_default=True,
                     help="Workers side by side (1, local: all in this process)."),
        click.option("--ray-address", default=None, metavar="ADDRESS",
                     help="Join the Ray cluster there (ray://host:10001, or host:6379 on a "
                          "node of it); default RAY_ADDRESS, else a Ray instance started "
                          "here."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def executor_from(params: dict):
    """The executor the command's ``--executor/--workers/--ray-address`` ask for (removed
    from ``params``), and whether any of them was given."""
    ctx = click.get_current_context()
    given = any(ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
                for name in ("executor", "workers", "ray_address") if name in params)
    executor = make_executor(params.pop("executor", "local"), params.pop("workers", 1),
                             params.pop("ray_address", None))
    return executor, given


class CriteriaType(click.ParamType):
    """A comma list of criteria (``l2,wanda,obs``), each known, once each, in order."""

    name = "CRITERION[,CRITERION...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        values = tuple(dict.fromkeys(v.strip() for v in str(value).split(",")))
        unknown = [v for v in values if v not in CRITERIA]
        if unknown:
            self.fail(f"unknown criterion {unknown[0]!r}; choose among "
                      f"{', '.join(sorted(CRITERIA))}", param, ctx)
        return values


def _strategy_options(sweep: bool = False):
    """How channels are chosen (a Strategy's fields); a sweep takes several criteria."""
    def wrap(f):
        return _with_strategy_options(f, sweep)
    return wrap


def _with_strategy_options(f, sweep: bool):
    criterion = (
        click.option("--criterion", type=CriteriaType(), default="l2", show_default=True,
                     help="How channels are scored; a comma list (l2,wanda,obs) sweeps each, "
                          "compared on the same timing.")
        if sweep else
        click.option("--criterion", type=choice(CRITERIA), default="l2", show_default=True,
                     help="How channels are scored."))
    decorators = [
        criterion,
        click.option("--group-reduction", type=choice(REDUCTIONS), default="sum",
                     show_default=True, help="Combine a group's member scores."),
        click.option("--normalize", "normalization", type=choice(NORMALIZATIONS),
                     default=None,
                     help="Make groups comparable for --allocation global (default: mean) "
                          "or latency (default: energy, the share of the reading layers' "
                          "output lost, where calibration statistics exist; else none)."),
        click.option("--allocation", type=choice(STRATEGY_ALLOCATIONS), default="auto",
                     show_default=True,
                     help="Spread the ratio over groups ('latency': spend --target-latency "
                          "where it loses the least importance per second saved, by the "
                          "per-layer table; 'auto': latency with --target-latency, else "
                          "uniform)."),
        click.option("--rank-by", type=choice(RANKINGS), default="score", show_default=True,
                     help="Global allocation ranks components by their normalized 'score', "
                          "or by 'score-per-mac' (importance against the MACs each costs)."),
        click.option("--max-ratio", type=float, default=None,
                     help="Most of one group that --allocation global or adaptive (default "
                          "0.9) or latency (default 0.5) may remove."),
        click.option("--compensate", type=choice(METHODS), default=None,
                     help="Re-fit the layers that read removed channels (default: obs for "
                          "--criterion obs and obspa, else none). Needs --calib, except with "
                          "obspa."),
        click.option("--obs-damping", type=float, default=DAMPING, show_default=True,
                     help="Damping of the OBS update, relative to the mean of diag(H). "
                          "Larger is safer with few calibration samples per input feature "
                          "(see RESULTS.md)."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def pruning_options(sweep: bool = False):
    """The options of one prune. ``sweep``: without the ratio, targets and steps (a sweep
    sets the ratio itself and prunes each in one verified step)."""
    def wrap(f):
        decorators = []
        if not sweep:
            decorators.append(click.option(
                "--ratio", type=float, default=0.5, show_default=True,
                help="Fraction of channels to remove from every prunable group."))
        each = "each ratio" if sweep else "--ratio"
        decorators += [
            click.option("--heads", type=float, default=None,
                         help=f"Fraction of attention heads to remove (default: {each})."),
            click.option("--mlp", type=float, default=None,
                         help="Fraction of MLP neurons (between Linear layers) to remove "
                              f"(default: {each})."),
            click.option("--hidden", type=float, default=None,
                         help="Fraction of the hidden size (channels a LayerNorm/RMSNorm reads "
                              "across) to remove. Off by default: it changes what the norms "
                              "compute."),
            click.option("--round-to", type=RoundTo(), default=DEFAULT_ROUND_TO,
                         show_default=True,
                         help="Keep channel counts that are multiples of N ('auto': 16 on an "
                              "x86 CPU with AVX2 or AVX-512, else 8)."),
            click.option("--exclude", multiple=True, metavar="NODE",
                         help="Node name (or glob) whose channels must not be pruned; "
                              "repeatable."),
            shape_option,
            click.option("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                         show_default=True,
                         help="Max relative error (per output channel) against the masked "
                              "original."),
            click.option("--check-data", type=click.Path(dir_okay=False), default=None,
                         help="An .npz with one array per model input, fed whole to the "
                              "check against the masked original instead of generated inputs "
                              "(a model that needs real values: sample rates, cache lengths)."),
            _strategy_options(sweep),
            click.option("--seed", type=int, default=0, show_default=True,
                         help="Seed of every random draw: check inputs, random calibration "
                              "inputs, the random criterion."),
            click.option(
                "--calib", multiple=True, metavar="DATA[@WEIGHT]",
                help="Calibration inputs for data-driven criteria and compensation: an .npz "
                     "with one array per model input (samples on axis 0); a folder of images "
                     "(see --preprocess); 'random' inputs; 'synthetic' (random inputs "
                     "matched to the BatchNorm statistics, obspa's default); 'natural' "
                     "(procedural dead-leaves images); or 'inverted' (those images optimized "
                     "through the model towards its classes and BatchNorm statistics; needs "
                     "the grad extra; best without data on BN-folded models). Repeat it to fuse "
                     "several sets, each with a weight: --calib general.npz@0.3 --calib "
                     "task.npz@0.7."),
            executor_options,
        ]
        if not sweep:   # a sweep changes neither depth nor a cache (evaluate.sweep)
            decorators += [
                click.option("--blocks", type=float, default=None,
                             help="First remove this many whole residual blocks (a fraction "
                                  "below 1: of those the model has), those that change their "
                                  "input least on --calib (else random) inputs; width pruning "
                                  "then runs only with --ratio/--heads/--mlp/--hidden."),
                click.option("--allow-cache-change", is_flag=True, default=False,
                             help="Let key/value heads go although they reach the KV cache "
                                  "(past_key_values.* / present.*): those inputs and outputs "
                                  "then lose them, and a genai_config.json beside the model is "
                                  "written updated next to the output."),
                preprocess_option(),
                click.option("--target-macs", type=float, default=None,
                             help="Keep this fraction of the MACs: the ratio is searched for "
                                  "(replaces --ratio)."),
                click.option("--target-params", type=float, default=None,
                             help="Keep this fraction of the params: the ratio is searched "
                                  "for."),
                click.option("--target-latency", type=float, default=None,
                             help="Keep this fraction of the dense model's latency on ONNX "
                                  "Runtime CPU here: searched on a per-layer latency table, "
                                  "then the result is timed."),
                click.option("--latency-table", type=click.Path(dir_okay=False),
                             default=None,
                             help="A JSON file of per-layer timings for --target-latency: read "
                                  "where it has this machine's (CPU, ONNX Runtime version, "
                                  "threads), extended with what this run times."),
                click.option("--latency-device", default=None, metavar="NAME",
                             help="Predict --target-latency from the timings a deployment "
                                  "device took (a section of --latency-table written by "
                                  "device_timer.py from `onnxprune latency-bundle`; any part "
                                  "of its name): nothing is timed here."),
                click.option("--latency-threads", type=int, default=1, show_default=True,
                             help="Intra-op threads ONNX Runtime uses when timing for "
                                  "--target-latency."),
                click.option("--steps", type=int, default=1, show_default=True,
                             help="Prune in this many smaller steps, re-scoring (and "
                                  "re-calibrating and re-compensating) the model between "
                                  "steps; each step is verified."),
            ]
        for decorator in reversed(decorators):
            f = decorator(f)
        return f
    return wrap


class RoundTo(click.ParamType):
    """A positive integer, or "auto" (resolved by ``PruneOptions``)."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number or 'auto'", param, ctx)


# CLI parameter → PruneOptions / Strategy field
_FIELDS = {"input_shape": "input_shapes", "group_reduction": "reduction",
           "obs_damping": "damping"}
_STRATEGY = ("criterion", "group_reduction", "normalization", "allocation", "max_ratio",
             "compensate", "obs_damping", "rank_by")
_OPTIONS = ("ratio", "heads", "mlp", "hidden", "round_to", "exclude", "input_shape",
            "tolerance", "seed", "target_macs", "target_params", "target_latency",
            "latency_threads", "latency_table", "latency_device", "steps", "check_data", "allow_cache_change",
            "blocks")


def prune_options_from(params: dict, calib=None) -> tuple[PruneOptions, set[str]]:
    """The PruneOptions the command's ``params`` describe (``calib``: the calibration sources
    already built), and the names of the fields the user set on the command line."""
    ctx = click.get_current_context()
    executor, executor_given = executor_from(params)
    strategy = Strategy(params["criterion"], **{
        _FIELDS.get(k, k): params[k] for k in _STRATEGY[1:] if k in params})
    fields = {_FIELDS.get(k, k): params[k] for k in _OPTIONS if k in params}
    fields["exclude"] = tuple(fields.get("exclude", ()))
    fields["input_shapes"] = shapes_of(fields.get("input_shapes", ()))
    options = PruneOptions(**fields, strategy=strategy, calib=calib, executor=executor)
    given = {_FIELDS.get(name, name) for name in params
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                                   ParameterSource.ENVIRONMENT)}
    if executor_given:
        given.add("executor")
    if calib is not None:
        given.add("calib")
    return options, given


def image_folder(path) -> bool:
    return isinstance(path, str) and os.path.isdir(path)
