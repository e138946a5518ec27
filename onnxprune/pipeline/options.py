"""Every option of a prune, in one record that the CLI, the Python API, ``sweep`` and pruning
in steps all build and read, so that an option cannot be accepted in one place and dropped in
another; and the check that every option given does something.

``Strategy`` is how channels are chosen (criterion, reduction, allocation, compensation);
``PruneOptions`` is everything else a prune needs (how much, where not, the check) with the
strategy inside.
"""

from __future__ import annotations

import dataclasses
from dataclasses import KW_ONLY, dataclass, field

from ..allocation import ALLOCATIONS
from ..calibration import DAMPING
from ..compensation import METHODS
from ..errors import UserError
from ..importance import CRITERIA, NORMALIZATIONS, REDUCTIONS
from ..recovery import RecoverOptions
from ..runtime.hardware import round_to_for

DEFAULT_ROUND_TO = 16  # measured: benchmarks/bench_round_to.py, RESULTS.md
DEFAULT_TOLERANCE = 1e-4
RANKINGS = ("score", "score-per-mac")
TARGETS = ("macs", "params", "latency")
STRATEGY_ALLOCATIONS = ("auto",) + ALLOCATIONS


@dataclass(frozen=True)
class Strategy:
    """How channels are chosen: the criterion, how member scores combine into a group score
    (``reduction``), how groups are made comparable (``normalization``, for global or latency
    allocation), how the ratio is spread over groups (``allocation``), and the most a single
    group may lose under global, adaptive or latency allocation (``max_ratio``; defaults that
    depend on the allocation: ``normalize_by``, ``group_cap``); ``rank_by=
    "score-per-mac"`` makes the global ranking weigh each component's normalized score against
    the MACs it costs. All but the criterion are given by keyword.

    ``allocation`` "auto" (the default) is latency-aware under a latency target and uniform
    otherwise (``under_target``): at equal measured latency, latency-aware allocation kept at
    least as much task quality as the uniform ratio on every real-weight model of the
    frontier, and landed all 12 zoo targets within 5 % (RESULTS.md issue 17, eleventh
    session)."""

    criterion: str = "l2"
    _: KW_ONLY
    reduction: str = "sum"
    normalization: str | None = None    # default: see ``normalize_by``
    allocation: str = "auto"        # see under_target
    max_ratio: float | None = None      # default: see ``group_cap``
    compensate: str | None = None   # none, bias, obs, sequential; default: obs for obspa, else none
    damping: float = DAMPING        # λ of the OBS update, relative to mean(diag H)
    rank_by: str = "score"          # global ranking: "score", or "score-per-mac" (cost-aware)

    @property
    def allocates(self) -> str:
        """The allocation a plan uses: "auto" is uniform where no latency target made it
        latency-aware (``under_target``)."""
        return "uniform" if self.allocation == "auto" else self.allocation

    def under_target(self, kind: str | None) -> Strategy:
        """This strategy for a prune with a ``kind`` target (None: a ratio): "auto" becomes
        latency-aware allocation under a latency target."""
        if self.allocation == "auto" and kind == "latency":
            return dataclasses.replace(self, allocation="latency")
        return self

    @property
    def normalize_by(self) -> str:
        """``normalization``, by default "mean" (best at equal MACs for global allocation,
        RESULTS.md issue 4); for latency allocation "energy" where calibration statistics
        are captured (each group's scores over its readers' output energy: YOLOv8n's
        detections kept where raw scores lost them, RESULTS.md issue 17), else "none"."""
        if self.normalization is not None:
            return self.normalization
        if self.allocation == "latency":
            return "energy" if self.needs else "none"
        return "mean"

    @property
    def group_cap(self) -> float:
        """``max_ratio``, by default 0.9, or 0.5 for latency allocation (deeper cuts lost task
        quality there: RESULTS.md issue 17)."""
        if self.max_ratio is not None:
            return self.max_ratio
        return 0.5 if self.allocation == "latency" else 0.9

    @property
    def cap_relaxes_to(self) -> float | None:
        """How far latency allocation may go past its default cap of one half where the
        target cannot be reached under it (ViT-B/16, RegNetY at 0.6: RESULTS.md issue 17):
        0.9; None where ``max_ratio`` was given (a cap asked for is kept)."""
        return 0.9 if self.max_ratio is None and self.allocation == "latency" else None

    @property
    def compensation(self) -> str:
        if self.compensate is not None:
            return self.compensate
        return "obs" if self.criterion in ("obs", "obspa") else "none"

    @property
    def needs_gram(self) -> bool:
        """Does it read Gram matrices (OBS scoring or OBS compensation)?"""
        return self.compensation == "obs" or self.criterion in ("obs", "obspa")

    @property
    def needs(self) -> str | None:
        """What data the strategy reads: "calibration", "synthetic" or None."""
        need = CRITERIA[self.criterion].needs if self.criterion in CRITERIA else "weights"
        if need == "weights" and self.compensation != "none":
            return "synthetic" if self.criterion == "obspa" else "calibration"
        if need == "weights" and self.allocation == "adaptive":
            return "synthetic"     # sensitivity is measured; with no data, on synthetic inputs
        return None if need == "weights" else need

    def given(self) -> set[str]:
        """The fields that differ from their defaults."""
        return _changed(self, Strategy())

    def check(self, has_calibration: bool = False, given: set[str] | None = None) -> None:
        """Values in range, and no field given that the others make pointless (``given``: the
        fields the user set; default: those that differ from their defaults)."""
        for name, value, allowed in (("criterion", self.criterion, tuple(CRITERIA)),
                                     ("group reduction", self.reduction, REDUCTIONS),
                                     ("normalization", self.normalize_by, NORMALIZATIONS),
                                     ("allocation", self.allocation,
                                      STRATEGY_ALLOCATIONS),
                                     ("compensation", self.compensation, METHODS),
                                     ("ranking", self.rank_by, RANKINGS)):
            if value not in allowed:
                raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.needs == "calibration" and not has_calibration:
            what = (f"criterion {self.criterion!r}" if CRITERIA[self.criterion].needs ==
                    "calibration" else f"--compensate {self.compensation}")
            raise UserError(f"{what} needs calibration data (--calib data.npz, or --calib "
                            f"random)")
        if not self.damping > 0.0:
            raise UserError(f"--obs-damping must be positive, got {self.damping}")
        if not 0.0 < self.group_cap < 1.0:
            raise UserError(f"max-ratio must be in (0, 1), got {self.group_cap}")
        self._check_effects(self.given() if given is None else given)

    def _check_effects(self, given: set[str]) -> None:
        if "normalization" in given and self.allocation not in ("global", "latency"):
            raise UserError("--normalize ranks groups against each other: it needs "
                            "--allocation global or latency")
        if self.normalize_by == "energy" and not self.needs:
            raise UserError("--normalize energy reads calibration statistics: it needs a "
                            "criterion or compensation that captures them (obs, obspa, "
                            "wanda, ... or --compensate obs)")
        if "rank_by" in given and self.allocation != "global":
            raise UserError("--rank-by ranks groups against each other: it needs "
                            "--allocation global")
        if "max_ratio" in given and self.allocates == "uniform":
            raise UserError("--max-ratio caps what one group loses under --allocation global, "
                            "adaptive or latency; with uniform every group loses the same ratio")
        if "damping" in given and self.compensation not in ("obs", "sequential"):
            raise UserError("--obs-damping regularizes the re-fit: it needs --compensate obs "
                            "(the default for --criterion obs and obspa) or sequential")
        if "reduction" in given and not CRITERIA[self.criterion].reduces:
            raise UserError(f"--group-reduction combines member scores, which criterion "
                            f"{self.criterion!r} does not read")


@dataclass(frozen=True, kw_only=True)
class PruneOptions:
    """Everything one prune needs besides the model.

    ``ratio``: the share of channels every prunable group loses; ``heads``, ``mlp``,
    ``hidden``: a ratio of their own for attention heads, MLP neurons and (opt-in) the hidden
    size. ``round_to``: kept channel counts are multiples of it ("auto": the block this
    machine's CPU runs fastest on, ``runtime.hardware``). ``exclude``: node names or
    globs whose channels stay. ``allow_cache_change``: key/value heads may go although they
    reach a KV cache, whose inputs and outputs then lose them (see ``rules.gqa``).
    ``blocks``: remove that many residual blocks first (a fraction below 1: of those there
    are), the ones that change their input least (see ``depth``). ``input_shapes``: sizes for dynamic dims. ``strategy``: how
    channels are chosen; ``calib``: calibration data for the strategies that read some.
    ``target_macs`` / ``target_params`` / ``target_latency``: a fraction of the dense model to
    keep, which replaces ``ratio`` by a search (``latency_table``: a JSON file the per-layer
    timings are read from and added to; ``latency_device``: predict from the section of it a
    deployment device timed, timing nothing here; ``latency_threads``: ONNX Runtime threads
    when timing). ``steps``: prune in that many smaller steps. ``seed``: every random draw
    (check inputs, random calibration inputs, the random criterion). ``verify`` with
    ``tolerance``: the checks every pruned model must pass; ``check_data``: an ``.npz`` with
    one array per model input, fed whole to the check (instead of generated inputs).
    ``fidelity``: after the check, compare the pruned model with the dense one (the report's
    fidelity section; a sweep turns it off, as it compares every copy on its own data).
    ``recover``: train the pruned model to reproduce the dense one on the ``calib`` inputs
    afterwards (see ``recovery``). ``executor``: where the one-per-component measurements of
    the distortion criterion and adaptive allocation run (``onnxprune.parallel``; None:
    this process); it changes no result.
    """

    ratio: float = 0.5
    heads: float | None = None
    mlp: float | None = None
    hidden: float | None = None
    round_to: int | str = DEFAULT_ROUND_TO     # or "auto": see runtime.hardware
    exclude: tuple[str, ...] = ()
    allow_cache_change: bool = False
    blocks: float | None = None
    input_shapes: dict | None = field(default=None, hash=False)
    strategy: Strategy = field(default_factory=Strategy)
    calib: object = field(default=None, hash=False)
    target_macs: float | None = None
    target_params: float | None = None
    target_latency: float | None = None
    latency_threads: int = 1
    latency_table: str | None = None
    latency_device: str | None = None
    steps: int = 1
    seed: int = 0
    tolerance: float = DEFAULT_TOLERANCE
    verify: bool = True
    fidelity: bool = True
    check_data: str | None = None
    recover: RecoverOptions | None = None
    executor: object = field(default=None, hash=False, compare=False)

    def replace(self, **changes) -> PruneOptions:
        return dataclasses.replace(self, **changes)

    @property
    def by_kind(self) -> dict[str, float]:
        """The ratios given per group kind ("heads", "mlp", "hidden")."""
        return {k: v for k, v in (("heads", self.heads), ("mlp", self.mlp),
                                  ("hidden", self.hidden)) if v is not None}

    @property
    def target(self) -> tuple[str, float] | None:
        """(kind, fraction) of the one target given, or None."""
        given = [(k, getattr(self, f"target_{k}")) for k in TARGETS
                 if getattr(self, f"target_{k}") is not None]
        return given[0] if given else None

    def __post_init__(self):
        if self.round_to == "auto":     # the block this machine's CPU runs fastest on
            object.__setattr__(self, "round_to", round_to_for("cpu"))

    def resolved(self) -> PruneOptions:
        """These options with the strategy's "auto" allocation made what the target asks
        for (``Strategy.under_target``). Done where a prune starts, not on construction: a
        copy made with ``replace`` may still gain or lose its target."""
        strategy = self.strategy.under_target(self.target[0] if self.target else None)
        return self if strategy is self.strategy else self.replace(strategy=strategy)

    def given(self) -> set[str]:
        """The fields that differ from their defaults, the strategy's among them (not the
        executor: it changes where, not what; the CLI adds it when its flags were given)."""
        return (_changed(self, PruneOptions()) - {"strategy", "executor"}
                | self.strategy.given())

    def check(self, given: set[str] | None = None) -> None:
        """Every value in range, and no option given that the others make pointless: a
        one-line UserError otherwise. ``given``: the options the user set (the CLI knows);
        default: those that differ from their defaults."""
        resolved = self.resolved()
        if resolved is not self:            # checked as the prune will run it
            return resolved.check(given)
        given = self.given() if given is None else given
        for name, value in [("ratio", self.ratio)] + list(self.by_kind.items()):
            if not 0.0 <= value < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {value}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise UserError(f"round-to must be a positive integer or auto, got "
                            f"{self.round_to}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise UserError(f"--steps must be a positive integer, got {self.steps}")
        if self.latency_threads < 1:
            raise UserError(f"--latency-threads must be at least 1, got {self.latency_threads}")
        if not self.tolerance > 0:
            raise UserError(f"--tolerance must be positive, got {self.tolerance}")
        if "executor" in given and self.strategy.criterion != "distortion" and \
                self.strategy.allocation != "adaptive":
            raise UserError("--executor/--workers run the distortion criterion's or adaptive "
                            "allocation's measurements side by side; this prune makes none "
                            "(sweep and sensitivity take them too)")
        targets = [k for k in TARGETS if getattr(self, f"target_{k}") is not None]
        if len(targets) > 1:
            raise UserError("give one of --target-macs, --target-params, --target-latency")
        if targets:
            kind, fraction = self.target
            if not 0.0 < fraction <= 1.0:
                raise UserError(f"--target-{kind} must be in (0, 1], got {fraction}")
            if "ratio" in given:
                raise UserError(f"--target-{kind} searches the ratio: drop --ratio")
        if self.steps != 1 and self.target_latency is not None:
            raise UserError("--target-latency prunes in one step (it times the result); drop "
                            "--steps")
        if self.strategy.allocation == "latency" and self.target_latency is None:
            raise UserError("--allocation latency spends a latency budget: give "
                            "--target-latency F (the fraction of the dense latency to keep)")
        if self.latency_table is not None and self.target_latency is None:
            raise UserError("--latency-table keeps the layer timings of --target-latency: it "
                            "needs --target-latency")
        if self.latency_device is not None and self.latency_table is None:
            raise UserError("--latency-device names a device section of --latency-table: "
                            "give --latency-table too")
        if "latency_threads" in given and self.target_latency is None:
            raise UserError("--latency-threads sets the threads --target-latency times with: "
                            "it needs --target-latency")
        if "tolerance" in given and not self.verify:
            raise UserError("a tolerance is for the check, which verify=False skips")
        if self.check_data is not None and not self.verify:
            raise UserError("--check-data feeds the check, which verify=False skips")
        self.strategy.check(self.calib is not None, given & STRATEGY_FIELDS)
        if self.recover is not None:
            self.recover.check()
            if self.calib is None:
                raise UserError("--recover distils on unlabeled inputs: give --calib (an .npz, "
                                "an image folder, or a generated source such as natural)")
            if not self.verify:
                raise UserError("--recover trains a verified pruned model; drop verify=False")
            if self.recover.features > 0 and self.steps != 1:
                raise UserError("--recover-features matches what one step kept of the dense "
                                "model's tensors: use it with --steps 1")
        if (self.calib is not None and self.strategy.needs is None and self.recover is None
                and self.blocks is None):
            raise UserError(f"--calib is read by data-driven criteria, compensation, "
                            f"adaptive allocation, --blocks and --recover; criterion "
                            f"{self.strategy.criterion!r} with --compensate none reads weights "
                            f"only")
        if self.blocks is not None:
            if not self.blocks > 0:
                raise UserError(f"--blocks must be positive, got {self.blocks:g}")
            if self.steps != 1 or self.target is not None:
                raise UserError("--blocks removes residual blocks once, before width pruning: "
                                "it does not combine with --steps or a --target-*")


STRATEGY_FIELDS = {f.name for f in dataclasses.fields(Strategy)}   # as given() names them


def _changed(record, default) -> set[str]:
    return {f.name for f in dataclasses.fields(record)
            if f.name != "_" and getattr(record, f.name) != getattr(default, f.name)}
