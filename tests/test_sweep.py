"""``onnxprune sweep``: the ratio parser by hand, a sweep of the digits model whose CSV, PNG and
JSON agree and add up, failed ratios as rows, bad input that stops before writing anything, and
a sweep of two models with two criteria whose models are those single prunes write."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from importlib import resources

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune import pipeline
from onnxprune.runtime import count_cost
from onnxprune.cli import main
from onnxprune.errors import UserError, VerificationError
from onnxprune.calibration import DAMPING
from onnxprune.evaluate import CSV_COLUMNS, BenchOptions, parse_ratios
from onnxprune.evaluate.sweep import criterion_options, sweep as sweep_models

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))


# --- the ratio parser -----------------------------------------------------------------------

def test_parse_ratios_by_hand():
    assert parse_ratios("0.1:0.9:0.1") == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert parse_ratios("0:0.6:0.3") == (0.0, 0.3, 0.6)
    assert parse_ratios("0.1:0.35:0.1") == (0.1, 0.2, 0.3)        # the stop is not a step
    assert parse_ratios("0.2:0.2:0.5") == (0.2,)
    assert parse_ratios("0.5, 0.25,0.5") == (0.25, 0.5)           # sorted, once each
    assert parse_ratios(" 0 ") == (0.0,)


@pytest.mark.parametrize("text,says", [
    ("0.1:0.9", "START:STOP:STEP"),
    ("0.1:0.5:0.1:0.2", "START:STOP:STEP"),
    ("a,b", "expects numbers"),
    ("", "expects numbers"),
    ("0.1,,0.2", "expects numbers"),
    ("nan", "expects numbers"),
    ("0:1:0.5", "in [0, 1), got 1"),
    ("0.5,1", "in [0, 1), got 1"),
    ("-0.1", "in [0, 1), got -0.1"),
    ("0.1:0.9:0", "step must be positive"),
    ("0.9:0.1:0.1", "stop is below the start"),
    ("0:0.9:0.001", "at most 100"),
])
def test_parse_ratios_rejects(text, says):
    with pytest.raises(UserError) as err:
        parse_ratios(text)
    assert says in str(err.value) and "\n" not in str(err.value)


# --- a sweep of the digits model ------------------------------------------------------------

@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One CLI sweep at 0, 0.3, 0.6 with everything written: (folder, JSON document, CSV rows,
    stderr)."""
    folder = tmp_path_factory.mktemp("sweep")
    args = ["sweep", DEMO, "--ratios", "0:0.6:0.3", "--runs", "10", "--csv",
            str(folder / "sweep.csv"), "--plot", str(folder / "sweep.png"), "--out-dir",
            str(folder / "models"), "--json"]
    info, err = _json_sweep(args)
    return folder, info, _csv_rows(folder / "sweep.csv"), err


def _json_sweep(args: list[str]) -> tuple[dict, str]:
    """Run ``onnxprune ARGS --json`` (outside capsys: a module fixture): its document and
    its stderr."""
    with pytest.MonkeyPatch.context() as mp:
        out, err = io.StringIO(), io.StringIO()
        mp.setattr(sys, "stdout", out)
        mp.setattr(sys, "stderr", err)
        code = main(args)
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue()), err.getvalue()


def _csv_rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_sweep_csv_rows_parse_and_add_up(swept):
    rows = swept[2]
    assert len(rows) == 3 and list(rows[0]) == list(CSV_COLUMNS)
    assert [float(r["ratio"]) for r in rows] == [0.0, 0.3, 0.6]
    dense = rows[0]
    assert 0.5 <= float(dense["speedup"]) <= 2.0                   # timing noise bounds
    assert float(dense["mac_ratio"]) == 1.0                        # exactly: the same MACs
    assert float(dense["cosine_mean"]) == pytest.approx(1.0)
    assert float(dense["cosine_min"]) == pytest.approx(1.0)
    assert float(dense["max_abs_error"]) == 0.0
    assert float(dense["params_kept"]) == float(dense["macs_kept"]) == 1.0
    params = [int(r["params"]) for r in rows]
    assert params[0] > params[1] > params[2]                       # params fall with the ratio
    for r in rows:
        assert r["error"] == "" and r["accuracy"] == ""            # no labels: empty
        lo, med, hi = (float(r[f"latency_{k}_ms"]) for k in ("min", "median", "p90"))
        assert 0 < lo <= med <= hi
        assert float(r["params_kept"]) == pytest.approx(int(r["params"]) / params[0])
        assert float(r["mac_ratio"]) == pytest.approx(int(dense["macs"]) / int(r["macs"]))
        assert float(r["macs_kept"]) == pytest.approx(1 / float(r["mac_ratio"]))
        assert -1.0 <= float(r["cosine_min"]) <= float(r["cosine_mean"]) <= 1.0 + 1e-12
        assert 0.0 <= float(r["top1_agreement"]) <= 1.0
    assert float(rows[2]["cosine_mean"]) < 1.0 and float(rows[2]["max_abs_error"]) > 0.0


def test_sweep_png_is_a_real_png(swept):
    path = swept[0] / "sweep.png"
    data = path.read_bytes()
    assert data[:4] == b"\x89PNG" and len(data) > 1024


def test_sweep_json_has_the_csv_numbers(swept):
    _, info, rows, _ = swept
    assert len(info["rows"]) == len(rows)
    for row, cells in zip(info["rows"], rows):
        for name in CSV_COLUMNS:
            value, cell = row[name], cells[name]
            if value is None:
                assert cell == "", name
            elif isinstance(value, str):
                assert cell == value, name
            else:
                assert float(cell) == value, name                 # written in full
    assert info["csv"].endswith("sweep.csv") and info["plot"].endswith("sweep.png")
    assert info["settings"]["ratios"] == [0.0, 0.3, 0.6] and info["settings"]["batch"] == 1
    assert info["settings"]["runs"] == 10 and info["settings"]["prune"]["criterion"] == "l2"
    assert info["fidelity"] == {"data": "random", "samples": 32, "labels": None}
    assert info["machine"]["onnxruntime"] == ort.__version__


def test_sweep_writes_the_pruned_models_to_out_dir(swept):
    folder, info, _, _ = swept
    written = sorted(os.listdir(folder / "models"))
    assert written == ["demo_digits.r0.3.onnx", "demo_digits.r0.6.onnx"]
    for row in info["rows"][1:]:
        assert os.path.getsize(row["path"]) == row["size_bytes"]
        model = onnx.load(row["path"])
        onnx.checker.check_model(model, full_check=True)
        assert row["params"] == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert info["rows"][0]["path"] == DEMO


def test_sweep_table_and_accuracy_with_labels(capsys, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((24, 1, 8, 8), dtype=np.float32)
    labels = rng.integers(0, 10, 24).astype(np.int64)
    np.savez(tmp_path / "val.npz", input=x, labels=labels)
    code = main(["sweep", DEMO, "--ratios", "0.5", "--runs", "10", "--data",
                 str(tmp_path / "val.npz"), "--csv", str(tmp_path / "s.csv")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "median ms" in out and "speedup" in out and "accuracy" in out
    assert f"wrote {tmp_path / 's.csv'}" in out
    sess = ort.InferenceSession(DEMO, providers=["CPUExecutionProvider"])
    expected = float(np.mean(np.argmax(sess.run(None, {"input": x})[0], 1) == labels))
    with open(tmp_path / "s.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["ratio"]) for r in rows] == [0.0, 0.5]         # the dense row comes first
    assert float(rows[0]["accuracy"]) == pytest.approx(expected)
    assert 0.0 <= float(rows[1]["accuracy"]) <= 1.0


def test_a_failed_ratio_is_a_row_and_the_sweep_goes_on(capsys, tmp_path, monkeypatch):
    sweep_module = sys.modules["onnxprune.evaluate.sweep"]

    real = sweep_module.prune

    def prune(model, options, **kwargs):
        if options.ratio == 0.3:
            raise VerificationError("the pruned model failed verification (made up)")
        return real(model, options, **kwargs)
    monkeypatch.setattr(sweep_module, "prune", prune)
    code = main(["sweep", DEMO, "--ratios", "0.3,0.6", "--runs", "10", "--csv",
                 str(tmp_path / "s.csv")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ratio 0.3: error: the pruned model failed verification (made up)" in out
    with open(tmp_path / "s.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["error"] for r in rows] == ["", "the pruned model failed verification (made up)",
                                          ""]
    assert rows[1]["params"] == rows[1]["speedup"] == rows[1]["cosine_mean"] == ""
    assert int(rows[2]["params"]) < int(rows[0]["params"]) and float(rows[2]["speedup"]) > 0


def test_a_sweep_checks_every_ratio_but_compares_each_once(monkeypatch):
    """Every ratio is checked against its masked original, and compared with the dense model
    once, on the sweep's data: the prune's own comparison (a dense run per ratio) is skipped,
    which was half of what a ratio cost."""
    sweep_module = sys.modules["onnxprune.evaluate.sweep"]
    real, seen = sweep_module.prune, []

    def prune(model, options, **kwargs):
        pruned, report = real(model, options, **kwargs)
        seen.append((options.fidelity, report["check"]["ok"], "fidelity" in report))
        return pruned, report
    monkeypatch.setattr(sweep_module, "prune", prune)
    result = sweep_models(DEMO, (0.3, 0.6), bench=BenchOptions(runs=3))
    assert seen == [(False, True, False)] * 2
    assert all(r["cosine_mean"] is not None for r in result["rows"][1:])


def test_pruned_copies_wait_for_their_timing_in_files_not_in_memory(monkeypatch, tmp_path):
    """Without --out-dir the copies go to a temporary folder, are timed from there and the
    folder goes afterwards: a 200-row sweep kept gigabytes of models in memory otherwise."""
    sweep_module = sys.modules["onnxprune.evaluate.sweep"]
    real, timed = sweep_module.benchmark, []

    def benchmark(models, *args, **kwargs):
        timed.extend(models)
        assert all(os.path.isfile(m) for m in models[1:])
        return real(models, *args, **kwargs)
    monkeypatch.setattr(sweep_module, "benchmark", benchmark)
    monkeypatch.setattr(sweep_module.tempfile, "tempdir", str(tmp_path))
    result = sweep_models(DEMO, (0.3, 0.6), bench=BenchOptions(runs=3))
    assert len(timed) == 3 and all(r["path"] is None for r in result["rows"][1:])
    assert list(tmp_path.iterdir()) == []


def test_copies_are_timed_a_group_at_a_time_in_order_of_ratio(monkeypatch, tmp_path):
    """The criteria's copies at one ratio share a timing group, each group beside the dense
    model, and every row gets its own model's numbers back."""
    bench = sys.modules["onnxprune.evaluate.bench"]
    sweep_module = sys.modules["onnxprune.evaluate.sweep"]
    real, loads = bench._load, []
    monkeypatch.setattr(bench, "_load", lambda m, i, fp16: loads.append(
        os.path.basename(str(m))) or real(m, i, fp16))
    monkeypatch.setattr(sweep_module, "TIMED_AT_ONCE", 2)
    result = sweep_models(DEMO, (0.3, 0.6), bench=BenchOptions(runs=3), out_dir=tmp_path,
                          criteria=["l2", "fpgm"])
    assert loads == ["demo_digits.onnx", "demo_digits.l2.r0.3.onnx", "demo_digits.fpgm.r0.3.onnx",
                     "demo_digits.onnx", "demo_digits.l2.r0.6.onnx", "demo_digits.fpgm.r0.6.onnx"]
    assert result["settings"]["at_once"] == 2
    for row in result["rows"][1:]:
        assert row["macs"] == count_cost(onnx.load(row["path"])).macs


def test_the_fidelity_comparison_can_be_left_out_and_the_check_stays():
    pruned, report = pipeline.prune(DEMO, ratio=0.5, fidelity=False)
    assert report["check"]["ok"] and "fidelity" not in report
    again, full = pipeline.prune(DEMO, ratio=0.5)
    assert full["fidelity"]["samples"] > 0
    assert again.SerializeToString() == pruned.SerializeToString()


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("change,says", [
    (["--ratios", "0.1-0.9"], "--ratios expects numbers"),
    (["--ratios", "0.2:0.9"], "START:STOP:STEP"),
    (["--ratios", "0.5,1.5"], "in [0, 1)"),
    (["--plot", "PLOT.jpg"], "--plot writes a PNG"),
    (["--csv", "MISSING/s.csv"], "folder does not exist"),
    (["--runs", "5", "--budget", "1"], "not both"),
    (["--criterion", "wanda"], "needs calibration data"),
    ("nomodel", "no such file"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, change, says):
    args = ["sweep", DEMO, "--runs", "10", "--csv", str(tmp_path / "s.csv"), "--plot",
            str(tmp_path / "s.png"), "--out-dir", str(tmp_path / "models")]
    if change == "nomodel":
        args[1] = str(tmp_path / "missing.onnx")
    else:
        args += [a.replace("PLOT", str(tmp_path / "p")).replace("MISSING", str(tmp_path / "no"))
                 for a in change]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err
    assert out == "" and "Traceback" not in err
    assert os.listdir(tmp_path) == []


# --- one scoring for every ratio ------------------------------------------------------------

def test_reused_scoring_prunes_exactly_as_a_fresh_prune():
    """The sweep scores once: a model pruned with the shared scoring must be byte-identical to
    one pruned from scratch, at every ratio, for a criterion that reads calibration data and
    compensates with it (the statistics must not be changed by an earlier ratio)."""
    strategy = pipeline.Strategy(criterion="obs", allocation="global")
    analyzed = pipeline.analyze_model(DEMO)
    scoring = pipeline.score_model(analyzed, strategy, "random")
    for ratio in (0.6, 0.3):
        reused, _ = pipeline.prune(analyzed, ratio=ratio, strategy=strategy, calib="random",
                              scoring=scoring, verify=False)
        fresh, _ = pipeline.prune(DEMO, ratio=ratio, strategy=strategy, calib="random",
                             verify=False)
        assert reused.SerializeToString() == fresh.SerializeToString()


def test_scoring_for_another_strategy_is_refused():
    analyzed = pipeline.analyze_model(DEMO)
    scoring = pipeline.score_model(analyzed, pipeline.Strategy(criterion="l1"))
    with pytest.raises(UserError, match="another model, strategy"):
        pipeline.prune(analyzed, ratio=0.5, strategy=pipeline.Strategy(criterion="l2"),
                       scoring=scoring)
    with pytest.raises(UserError, match="another model, strategy"):
        pipeline.prune(pipeline.analyze_model(DEMO), ratio=0.5,
                       strategy=pipeline.Strategy(criterion="l1"), scoring=scoring)


# --- several models and criteria in one sweep -----------------------------------------------

KERAS = os.path.join(os.path.dirname(__file__), "fixtures", "tf2onnx_keras_cnn.onnx")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One CLI sweep of two models with two criteria (obs reads calibration data, l2 does
    not) at two ratios, everything written: (folder, JSON document, CSV rows)."""
    folder = tmp_path_factory.mktemp("zoo")
    args = ["sweep", DEMO, KERAS, "--criterion", "obs,l2", "--calib", "random", "--ratios",
            "0.3,0.6", "--runs", "5", "--csv", str(folder / "zoo.csv"), "--plot",
            str(folder / "zoo.png"), "--out-dir", str(folder / "models"), "--json"]
    return folder, _json_sweep(args)[0], _csv_rows(folder / "zoo.csv")


def test_a_zoo_sweep_has_a_row_per_model_criterion_and_ratio(zoo):
    folder, info, rows = zoo
    assert info["models"] == [DEMO, KERAS] and info["criteria"] == ["obs", "l2"]
    assert [(r["model"], r["criterion"], r["ratio"]) for r in rows] == [
        (m, c, r) for m in (DEMO, KERAS)
        for c, r in [("", "0.0")] + [(c, r) for c in ("obs", "l2") for r in ("0.3", "0.6")]]
    assert all(r["error"] == "" for r in rows)
    for model in (DEMO, KERAS):
        mine = [r for r in info["rows"] if r["model"] == model]
        assert mine[0]["speedup"] is not None and mine[0]["mac_ratio"] == 1.0
        assert all(r["params"] < mine[0]["params"] for r in mine[1:])
    section = info["sweeps"][1]
    assert section["model"] == KERAS and section["error"] is None
    assert section["fidelity"]["samples"] == 32
    assert "model" not in info and info["settings"]["prune"]["criterion"] == "obs,l2"
    png = (folder / "zoo.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 1024


def test_each_zoo_model_is_the_one_a_single_prune_writes(zoo):
    """Every written model is the bytes one prune of that model with that criterion writes:
    calibration goes to obs only (l2 refuses it), the options are not mixed up between
    models or criteria."""
    folder, info, _ = zoo
    names = sorted(os.listdir(folder / "models"))
    assert names == sorted(f"{stem}.{c}.r{r}.onnx" for stem in ("demo_digits",
                           "tf2onnx_keras_cnn") for c in ("obs", "l2") for r in ("0.3", "0.6"))
    for row in info["rows"]:
        if row["ratio"] == 0.6:
            calib = "random" if row["criterion"] == "obs" else None
            expected, _ = pipeline.prune(row["model"], ratio=0.6, calib=calib,
                                         strategy=pipeline.Strategy(row["criterion"]))
            written = onnx.load(row["path"])
            onnx.checker.check_model(written, full_check=True)
            assert written.SerializeToString() == expected.SerializeToString(), row["path"]


def test_a_broken_model_or_criterion_among_several_is_a_row(capsys, tmp_path, monkeypatch):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    sweep_module = sys.modules["onnxprune.evaluate.sweep"]
    real = sweep_module.score_model

    def score_model(analyzed, strategy, *args, **kwargs):
        if strategy.criterion == "l1":
            raise UserError("scoring failed (made up)")
        return real(analyzed, strategy, *args, **kwargs)
    monkeypatch.setattr(sweep_module, "score_model", score_model)
    code = main(["sweep", DEMO, str(broken), "--criterion", "l2,l1", "--ratios", "0.5",
                 "--runs", "3", "--csv", str(tmp_path / "s.csv")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{broken}: error: not a valid ONNX model" in out
    assert f"{DEMO}: criterion l1: error: scoring failed (made up)" in out
    with open(tmp_path / "s.csv", newline="", encoding="utf-8") as f:
        rows = [(r["model"], r["criterion"], r["ratio"], r["error"] != "")
                for r in csv.DictReader(f)]
    assert rows == [(DEMO, "", "0.0", False), (DEMO, "l1", "", True),
                    (DEMO, "l2", "0.5", False), (str(broken), "", "", True)]


def test_options_go_to_the_criteria_they_do_something_for():
    options = pipeline.PruneOptions(strategy=pipeline.Strategy(damping=0.1), calib="random")
    variants = dict(criterion_options(options, ["l2", "obs"], {"damping", "calib"}))
    assert variants["l2"].calib is None and variants["l2"].strategy.damping == DAMPING
    assert variants["obs"].calib == "random" and variants["obs"].strategy.damping == 0.1
    for variant in variants.values():
        variant.check()                  # as prune() checks each one


@pytest.mark.parametrize("criteria,options,given,says", [
    (["l2", "wanda"], {}, set(), "criterion 'wanda' needs calibration data"),
    (["l2", "l1"], {"calib": "random"}, {"calib"}, "--calib is read by data-driven"),
    (["l2", "l1"], {"strategy": pipeline.Strategy(damping=0.1)}, {"damping"},
     "--obs-damping regularizes the re-fit"),
    (["l2", "wanda"], {"calib": "random", "strategy": pipeline.Strategy(
        allocation="global", normalization="energy")}, {"allocation", "normalization"},
     "criterion 'l2': --normalize energy reads calibration statistics"),
])
def test_criteria_that_cannot_run_are_refused_before_any_work(criteria, options, given, says):
    with pytest.raises(UserError, match=re.escape(says)):
        criterion_options(pipeline.PruneOptions(**options), criteria, given)


@pytest.mark.parametrize("models,says", [
    (["DEMO", "DEMO"], "a model is given twice"),
    (["DEMO", "COPY"], "two models are named demo_digits"),
])
def test_a_zoo_whose_files_would_collide_is_refused(capsys, tmp_path, models, says):
    (tmp_path / "other").mkdir()
    copy = tmp_path / "other" / "demo_digits.onnx"
    copy.write_bytes(open(DEMO, "rb").read())
    paths = [DEMO if m == "DEMO" else str(copy) for m in models]
    code = main(["sweep", *paths, "--ratios", "0.5", "--out-dir", str(tmp_path / "out")])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {says}"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fields,says", [
    ({"allow_cache_change": True}, "resizes the KV cache inputs"),
    ({"blocks": 0.5}, "it takes no blocks"),
])
def test_what_a_sweep_cannot_do_is_refused_by_the_api_too(fields, says):
    """The CLI's sweep has no --blocks or --allow-cache-change; the API refuses them."""
    with pytest.raises(UserError, match=says):
        sweep_models(DEMO, [0.5], pipeline.PruneOptions(**fields))
