"""``onnxprune sweep``: the ratio parser by hand, a sweep of the digits model whose CSV, PNG and
JSON agree and add up, failed ratios as rows, and bad input that stops before writing anything."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from importlib import resources

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune import pipeline
from onnxprune.cli import main
from onnxprune.errors import UserError, VerificationError
from onnxprune.evaluate import CSV_COLUMNS, parse_ratios

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
    with pytest.MonkeyPatch.context() as mp:
        out, err = io.StringIO(), io.StringIO()
        mp.setattr(sys, "stdout", out)
        mp.setattr(sys, "stderr", err)
        code = main(args)
    assert code == 0, err.getvalue()
    with open(folder / "sweep.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return folder, json.loads(out.getvalue()), rows, err.getvalue()


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
        pipeline.prune(analyzed, ratio=0.5, strategy=pipeline.Strategy(criterion="l2"), scoring=scoring)
    with pytest.raises(UserError, match="another model, strategy"):
        pipeline.prune(pipeline.analyze_model(DEMO), ratio=0.5, strategy=pipeline.Strategy(criterion="l1"),
                  scoring=scoring)
