"""Latency-aware allocation (issue 17): the latency budget goes where the least importance is
lost per second saved, priced on the per-layer table. The greedy is checked on latency models
written here (so that what saves time is known), then end to end through
``--target-latency`` with a modelled predictor and with the real table; and the table kept
on disk (``--latency-table``)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

import onnxprune
from onnxprune.allocation.latency_aware import latency_allocation
from onnxprune.errors import UserError
from onnxprune.groups import Group

from .test_steps_and_costs import conv_stack


def group(gid: int, start: int, size: int) -> Group:
    return Group(gid, np.arange(start, start + size), 1, [], [], True)


class Additive:
    """Latency = 1 − Σ over removed components of their group's seconds per component;
    ``plateau``: a group saves nothing until ``k`` of its components are gone (a width off
    the hardware's block)."""

    def __init__(self, groups, per_component, plateau=None):
        self.owner = {int(c): g.id for g in groups for c in g.components}
        self.per = per_component
        self.plateau = plateau or {}

    def fraction(self, removed):
        gone = {}
        for c in removed:
            gone[self.owner[c]] = gone.get(self.owner[c], 0) + 1
        saved = sum(n * self.per[g] for g, n in gone.items() if n >= self.plateau.get(g, 0))
        return 1.0 - saved

    settle = fraction

    def neighbours(self, gid):
        return set()


def test_time_is_taken_where_it_costs_least_importance():
    groups = [group(0, 0, 32), group(1, 32, 32)]
    ranking = np.ones(64)
    cost = Additive(groups, {0: 0.02, 1: 0.0})      # group 1 costs no time at all
    taken = latency_allocation(groups, ranking, 0.3, 1, {0: 0.5, 1: 0.5}, 0.9, cost)
    assert taken[1] == 0 and 0.3 <= taken[0] * 0.02 < 0.3 + 0.02 * 2


def test_importance_per_second_decides_between_groups():
    groups = [group(0, 0, 32), group(1, 32, 32)]
    ranking = np.concatenate([np.full(32, 1.0), np.full(32, 4.0)])   # group 1 matters more
    cost = Additive(groups, {0: 0.01, 1: 0.02})     # ... but saves only twice the time
    taken = latency_allocation(groups, ranking, 0.2, 1, {0: 0.5, 1: 0.5}, 0.9, cost)
    assert taken[0] >= 20 and taken[1] == 0


def test_a_width_that_saves_nothing_is_looked_past():
    groups = [group(0, 0, 32)]
    cost = Additive(groups, {0: 0.02}, plateau={0: 16})     # nothing until 16 go
    taken = latency_allocation(groups, np.ones(32), 0.3, 1, {0: 0.5}, 0.9, cost)
    assert taken[0] >= 16 and cost.fraction(set(range(taken[0]))) <= 0.7


def test_the_cap_is_lifted_only_where_the_target_needs_it():
    groups = [group(0, 0, 32), group(1, 32, 32)]
    ranking = np.concatenate([np.full(32, 1.0), np.full(32, 2.0)])
    cost = Additive(groups, {0: 0.01, 1: 0.01})
    reach = latency_allocation(groups, ranking, 0.2, 1, {0: 0.5, 1: 0.5}, 0.5, cost, 0.9)
    assert reach == {0: 16, 1: 4}                   # within the cap: it stays
    capped = latency_allocation(groups, ranking, 0.5, 1, {0: 0.5, 1: 0.5}, 0.5, cost)
    assert capped == {0: 16, 1: 16}                 # out of reach: as close as the cap allows
    lifted = latency_allocation(groups, ranking, 0.5, 1, {0: 0.5, 1: 0.5}, 0.5, cost, 0.9)
    assert lifted == {0: 28, 1: 22}                 # the cheaper group first, to 0.9
    assert onnxprune.Strategy(allocation="latency").cap_relaxes_to == 0.9
    assert onnxprune.Strategy(allocation="latency", max_ratio=0.5).cap_relaxes_to is None
    assert onnxprune.Strategy(allocation="global").cap_relaxes_to is None
    assert cost.fraction(set(range(lifted[0])) | set(range(32, 32 + lifted[1]))) <= 0.5 + 1e-9


def test_a_group_too_small_for_the_multiple_steps_by_half_of_it():
    from onnxprune.allocation.rounding import component_step

    assert component_step(32, 1, 16) == 16 and component_step(8, 6, 16) == 4
    grouped = Group(0, np.arange(8), 6, [], [], True)   # RegNet: 8 components of 6 channels
    cost = Additive([grouped], {0: 0.05})
    taken = latency_allocation([grouped], np.ones(8), 0.2, 16, {0: 0.5}, 0.5, cost)
    assert taken == {0: 4}              # 24 channels of 48 go (a multiple of 8, not of 16)


def test_a_group_of_one_block_is_not_cut_below_the_block():
    """A conv reading fewer channels than ONNX Runtime's NCHWc block runs a slow direct
    kernel: a group of exactly ``round_to`` channels stays whole, wider groups keep at least
    one block, narrower ones (and RegNet's grouped convs) step by half the multiple as
    before."""
    from onnxprune.allocation.ratio import kept_count
    from onnxprune.allocation.rounding import least_kept

    assert least_kept(16, 1, 16) == 16 and kept_count(16, 1, 0.5, 16) == 16
    assert least_kept(48, 1, 16) == 16 and kept_count(48, 1, 0.9, 16) == 16
    assert least_kept(8, 6, 16) == 4 and kept_count(8, 6, 0.5, 16) == 4
    assert least_kept(8, 1, 16) == 4 and kept_count(8, 1, 0.5, 16) == 4
    assert least_kept(20, 1, 1) == 1
    block, wide = group(0, 0, 16), group(1, 16, 48)
    cost = Additive([block, wide], {0: 0.02, 1: 0.01})
    taken = latency_allocation([block, wide], np.ones(64), 0.5, 16, {0: 0.9, 1: 0.9}, 0.9,
                               cost)
    assert taken.get(0, 0) == 0 and taken[1] == 32


def test_a_group_off_the_multiple_is_offered_only_widths_on_it():
    """40 channels with --round-to 16: a first step of 8 (to 32), then 16 (to 16); never 24
    or 8, which ONNX Runtime's blocked convs (16 on AVX-512) cannot take."""
    from onnxprune.allocation.latency_aware import _Step

    s = _Step(16, 24, 24, first=8)
    assert [s.after(k) for k in s.moves(24)] == [8, 24]
    odd = group(0, 0, 40)
    for ratio, lost in ((0.1, 8), (0.35, 24)):
        cost = Additive([odd], {0: 0.0125})          # the whole group: half the latency
        assert latency_allocation([odd], np.ones(40), ratio, 16, {0: 0.9}, 0.9, cost) == \
            {0: lost}


def test_frozen_or_unasked_groups_stay_whole():
    groups = [group(0, 0, 32), group(1, 32, 32)]
    cost = Additive(groups, {0: 0.01, 1: 0.01})
    taken = latency_allocation(groups, np.ones(64), 0.5, 1, {0: 0.5, 1: 0.0}, 0.9, cost)
    assert taken.get(1, 0) == 0 and taken[0] <= int(0.9 * 32)


class OneLayerCounts:
    """A predictor whose latency is the first conv's output width alone (``layers`` of the
    real table): only the first group's channels cost time."""

    def __init__(self, model, input_shapes=None, threads=1, progress=None, table_path=None,
                 device=None):
        self.device = device
        from onnxprune.runtime import LayerLatencyTable

        self.threads, self.table = threads, LayerLatencyTable(model, input_shapes)
        self.first = min(self.table.layers())
        self.dense_out = self.table.layers()[self.first][1]
        self.dense = self.dense_layers = 1.0
        self.stale = None

    def layer_cost(self, node, dims=None):
        if node != self.first:
            return 0.0
        return 1.0 if dims is None else dims[0] / self.dense_out

    def stream_cost(self, node, shapes=None):
        return 0.0

    def measure(self, model):
        conv = next(n for n in model.graph.node if n.op_type == "Conv")
        weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
        return weight.dims[0] / self.dense_out

    def save(self):
        return 0, 0


def test_latency_allocation_spends_the_target_where_time_goes(monkeypatch):
    from onnxprune.pipeline import once

    monkeypatch.setattr(once, "LatencyPredictor", OneLayerCounts)
    model = conv_stack()
    strategy = onnxprune.Strategy("l2", allocation="latency")
    pruned, report = onnxprune.prune(model, round_to=8, target_latency=0.5, strategy=strategy)
    assert report["check"]["ok"] and report["target"]["met"]
    removed = [len(g["removed"]) for g in report["groups"]]
    assert removed[0] == 32 and removed[1] == 0     # the free group keeps all it has
    _, uniform = onnxprune.prune(model, round_to=8, target_latency=0.5,
                                 strategy=onnxprune.Strategy("l2", allocation="uniform"))
    assert [len(g["removed"]) for g in uniform["groups"]][1] > 0
    assert report["macs"]["after"] > uniform["macs"]["after"]   # same time, more compute


def test_latency_allocation_on_real_timings_meets_the_target_and_the_oracle():
    model = conv_stack()
    strategy = onnxprune.Strategy("l2", allocation="latency")
    pruned, report = onnxprune.prune(model, round_to=8, target_latency=0.6, strategy=strategy)
    assert report["check"]["ok"] and report["target"]["kind"] == "latency"
    assert report["target"]["measured"] < 1.0 and report["check"]["max_rel_error"] < 1e-4


def test_a_latency_target_allocates_by_latency_unless_told_otherwise():
    """``--allocation auto``, the default, is latency-aware under a latency target and
    uniform otherwise; an allocation asked for is kept, and options checked before the prune
    starts are checked as it will run (--max-ratio is no error under auto with a target)."""
    from onnxprune.pipeline import PruneOptions

    model = conv_stack()
    _, latency = onnxprune.prune(model, round_to=8, target_latency=0.6)
    assert latency["strategy"]["allocation"] == "latency" and latency["target"]["met"]
    _, ratio = onnxprune.prune(model, round_to=8, ratio=0.5)
    assert ratio["strategy"]["allocation"] == "uniform"
    _, macs = onnxprune.prune(model, round_to=8, target_macs=0.5)
    assert macs["strategy"]["allocation"] == "uniform"
    asked = onnxprune.Strategy("l2", allocation="uniform")
    _, uniform = onnxprune.prune(model, round_to=8, target_latency=0.6, strategy=asked)
    assert uniform["strategy"]["allocation"] == "uniform"
    capped = PruneOptions(target_latency=0.6, strategy=onnxprune.Strategy(max_ratio=0.4))
    capped.check()
    assert capped.resolved().strategy.allocation == "latency"
    with pytest.raises(UserError, match="--max-ratio caps"):
        PruneOptions(strategy=onnxprune.Strategy(max_ratio=0.4)).check()


def test_latency_allocation_needs_a_latency_target():
    with pytest.raises(UserError, match="--target-latency"):
        onnxprune.prune(conv_stack(), ratio=0.5,
                        strategy=onnxprune.Strategy("l2", allocation="latency"))


def test_a_latency_table_is_kept_on_disk_and_read_again(tmp_path, monkeypatch):
    import json

    from onnxprune.runtime import layer_table
    from onnxprune.runtime.latency_store import place

    # reuse only: how far apart the empty runs may be is the next test's, and on a loaded
    # test machine they can be
    monkeypatch.setattr(layer_table, "STALE_SHARE", float("inf"))

    path = tmp_path / "table.json"
    elsewhere = {"another CPU | onnxruntime 0 | CPUExecutionProvider | 1 threads": {"k": 1.0}}
    path.write_text(json.dumps({"format": 1, "sections": elsewhere}))
    model = conv_stack()
    _, first = onnxprune.prune(model, round_to=8, target_latency=0.6, latency_table=str(path))
    assert first["target"]["table_timed"] > 0 and first["target"]["table_reused"] == 0
    sections = json.loads(path.read_text())["sections"]
    assert set(sections) == set(elsewhere) | {place("CPUExecutionProvider", 1)}
    assert sections[next(iter(elsewhere))] == {"k": 1.0}        # kept as it was
    timed = len(sections[place("CPUExecutionProvider", 1)])
    _, second = onnxprune.prune(model, round_to=8, target_latency=0.6, latency_table=str(path))
    assert second["target"]["table_reused"] >= first["target"]["table_timed"] // 2
    assert len(json.loads(path.read_text())["sections"][place("CPUExecutionProvider", 1)]) \
        == timed + second["target"]["table_timed"]


def test_a_table_timed_slower_is_dropped_and_one_timed_faster_is_read_alone(tmp_path, capsys):
    """An empty run timed beside a section far slower than it runs here: the section's
    timings ran under load (or on another machine of this name) and are dropped, not mixed
    with fresh ones. Far faster: this run is the loaded one, so the section is read and not
    added to. The report and the summary say which."""
    import json

    from onnxprune.cli import main
    from onnxprune.io import save_model
    from onnxprune.runtime.latency_store import place, signature_key

    here = place("CPUExecutionProvider", 1)
    probe = signature_key(("empty-run probe", 1))
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"format": 1, "sections": {here: {probe: 1.0, "k": 1.0}}}))
    _, report = onnxprune.prune(conv_stack(), round_to=8, target_latency=0.6,
                                latency_table=str(path))
    stale = report["target"]["table_stale"]
    assert stale["empty_run_stored_s"] == 1.0 and stale["empty_run_here_s"] < 0.01
    assert stale["dropped"] == 2 and report["target"]["table_reused"] == 0
    timings = json.loads(path.read_text())["sections"][here]
    assert "k" not in timings and timings[probe] == stale["empty_run_here_s"]
    assert len(timings) == report["target"]["table_timed"] + 1     # and the probe
    timings = {**dict(list(timings.items())[::2]), probe: 1e-9}   # half to time again, and
    #                                                                this run is the slow one
    path.write_text(json.dumps({"format": 1, "sections": {here: timings}}))
    _, again = onnxprune.prune(conv_stack(), round_to=8, target_latency=0.6,
                               latency_table=str(path))
    stale = again["target"]["table_stale"]
    assert stale["dropped"] == 0 and stale["empty_run_here_s"] > 1e-9
    assert again["target"]["table_reused"] > 0 and again["target"]["table_timed"] > 0
    assert json.loads(path.read_text())["sections"][here] == timings    # nothing added
    save_model(conv_stack(), str(tmp_path / "m.onnx"))
    for stored, said in ((1.0, "were dropped and timed again"), (1e-9, "this run's not added")):
        path.write_text(json.dumps({"format": 1, "sections": {here: {probe: stored}}}))
        code = main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"),
                     "--target-latency", "0.6", "--round-to", "8", "--latency-table",
                     str(path)])
        assert code == 0 and said in capsys.readouterr().out


def test_a_latency_table_that_is_not_one_is_a_clear_error(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("not json")
    with pytest.raises(UserError, match="--latency-table .*cannot read it"):
        onnxprune.prune(conv_stack(), target_latency=0.6, latency_table=str(path))
    assert path.read_text() == "not json"
    with pytest.raises(UserError, match="needs --target-latency"):
        onnxprune.prune(conv_stack(), ratio=0.5, latency_table=str(path))


class MacLike:
    """A predictor whose latency is Σ w·c_in·c_out over the table's layers, a different w per
    layer: deterministic, and several groups save time at different rates."""

    def __init__(self, model):
        from onnxprune.runtime import LayerLatencyTable

        self.table = LayerLatencyTable(model)
        self.weight = {n: 1.0 + k for k, n in enumerate(sorted(self.table.layers()))}
        self.device, self.dense = None, 1.0
        self.dense_layers = sum(self.layer_cost(n) for n in self.weight)

    def layer_cost(self, node, dims=None):
        widths = self.table.layers()[node] if dims is None else self.table.widths(node, dims)
        return self.weight[node] * float(np.prod(widths))

    def stream_cost(self, node, shapes=None):
        return 0.0


def test_the_latency_budget_is_the_plan_a_bisection_would_end_on():
    """With latency-aware allocation the ratio is the predicted latency to remove, so the
    target search takes ratio 1 − fraction in one greedy run: its plan must be the one the
    smallest meeting ratio gives, as a bisection finds it."""
    from onnxprune.pipeline import analyze_model, score_model
    from onnxprune.pipeline.latency_cost import PlanLatency
    from onnxprune.pipeline.targets import TargetSearch, ratio_for_target

    a = analyze_model(conv_stack())
    strategy = onnxprune.Strategy("l2", allocation="latency")
    predictor = MacLike(a.model)
    priced = PlanLatency(a, predictor)
    search = TargetSearch(a, 8, {}, strategy, score_model(a, strategy).scored,
                          predictor=predictor, priced=priced, latency=priced)

    def removed(ratio):
        from onnxprune.pipeline.plan import make_plan
        return make_plan(a, ratio, 8, {}, strategy, search.scored, priced).removed

    plans = []
    for fraction in (0.9, 0.7, 0.5, 0.3):
        ratio, kept = ratio_for_target(search, "latency", fraction)
        assert ratio == pytest.approx(1 - fraction) and kept <= fraction
        lo, hi = 0.0, ratio
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if search.kept("latency", mid) <= fraction else (mid, hi)
        np.testing.assert_array_equal(removed(hi), removed(ratio))
        plans.append(removed(ratio).sum())
    assert plans == sorted(plans) and len(set(plans)) == len(plans)   # four different plans
    with pytest.raises(UserError, match="cannot reach --target-latency 0.01"):
        ratio_for_target(search, "latency", 0.01, timed_start=False)
    # where this machine can time the result, timing decides instead of the table
    assert ratio_for_target(search, "latency", 0.01)[0] == pytest.approx(0.99)
    assert search.table_reaches is False


@pytest.mark.parametrize("allocation", ["uniform", "latency"])
def test_a_target_the_table_cannot_reach_is_left_to_the_timing(monkeypatch, allocation):
    """On a model of microsecond layers the per-layer table is mostly noise, and it may
    see no plan that meets a target that the pruned model, timed, meets. Then the timed
    search starts without it (from the ratio that meets the target in MACs), and the report
    says so, rather than refusing the target."""
    from onnxprune.pipeline.latency_cost import PlanLatency
    monkeypatch.setattr(PlanLatency, "fraction_of", lambda self, removed: 1.0)
    demo = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))
    pruned, report = onnxprune.prune(demo, target_latency=0.8,
                                     strategy=onnxprune.Strategy("l2", allocation=allocation))
    target = report["target"]
    assert target["table_reaches"] is False and target["ratio"] > 0
    assert target["measured"] is not None and report["check"]["ok"]
    assert len(pruned.graph.initializer) and report["macs"]["after"] < report["macs"]["before"]
