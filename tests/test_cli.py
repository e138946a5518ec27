"""The command line: the happy paths and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import hashlib
import json
import os

import onnx
import pytest

from onnxprune.cli import main

from .test_patterns import residual


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(residual(), path)
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_prunes_the_bundled_model(tmp_path, capsys):
    out = tmp_path / "demo.onnx"
    assert main(["demo", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mask-equivalence" in text and "-> OK" in text and "params" in text
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_prune_writes_model_and_report_and_leaves_input_alone(model_file, tmp_path, capsys):
    out, report = tmp_path / "out.onnx", tmp_path / "plan.json"
    before = digest(model_file)
    code = main(["prune", str(model_file), "-o", str(out), "--ratio", "0.5", "--round-to", "1",
                 "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    assert digest(model_file) == before
    plan = json.loads(report.read_text())
    assert plan["check"]["ok"] and plan["macs"]["after"] < plan["macs"]["before"]
    assert all(sorted(g["kept"] + g["removed"]) == list(range(g["units"])) for g in plan["groups"])
    assert onnx.load(out).graph.output[0].name == onnx.load(model_file).graph.output[0].name
    assert not list(tmp_path.glob(".*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_default_output_path(model_file):
    assert main(["prune", str(model_file)]) == 0
    assert model_file.with_name("model.pruned.onnx").exists()


def test_inspect_json(model_file, capsys):
    assert main(["inspect", str(model_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] > 0 and info["macs"] > 0
    assert any(g["prunable"] for g in info["groups"])
    assert all({"members", "channels", "prunable"} <= set(g) for g in info["groups"])


def test_inspect_table(model_file, capsys):
    assert main(["inspect", str(model_file)]) == 0
    assert "prunable" in capsys.readouterr().out


def _bad_inputs(tmp_path, model_file):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a model")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(model_file.read_bytes()[:200])
    return {
        "missing file": ["prune", str(tmp_path / "nope.onnx")],
        "directory": ["prune", str(tmp_path)],
        "not onnx": ["prune", str(text)],
        "empty": ["prune", str(empty)],
        "truncated": ["prune", str(truncated)],
        "ratio too big": ["prune", str(model_file), "--ratio", "1.5"],
        "negative ratio": ["prune", str(model_file), "--ratio", "-0.1"],
        "bad round-to": ["prune", str(model_file), "--round-to", "0"],
        "output is input": ["prune", str(model_file), "-o", str(model_file)],
        "output folder missing": ["prune", str(model_file), "-o", str(tmp_path / "no" / "x.onnx")],
        "bad input shape": ["prune", str(model_file), "--input-shape", "x:1xAx8"],
        "unknown input name": ["prune", str(model_file), "--input-shape", "y:1x3x8x8"],
        "unknown exclude": ["prune", str(model_file), "--exclude", "nothing-like-this"],
        "unknown option": ["prune", str(model_file), "--frobnicate"],
    }


@pytest.mark.parametrize("case", [
    "missing file", "directory", "not onnx", "empty", "truncated", "ratio too big",
    "negative ratio", "bad round-to", "output is input", "output folder missing",
    "bad input shape", "unknown input name", "unknown exclude", "unknown option"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, model_file, capsys):
    args = _bad_inputs(tmp_path, model_file)[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, "a failed run must write nothing and change nothing"
