"""Hostile and broken input (issue 6): every case is one line on stderr, the documented exit
code (2: the user's input; 1: our bug, with how to report it), no output file, and every input
byte unchanged. The simple cases (missing, empty, truncated files, bad options) are in
test_cli.py; these are the models that are broken inside, unsafe external data, calibration
data that does not fit, and outputs that cannot be written."""

from __future__ import annotations

import os
import shutil
from importlib import resources

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune import pipeline
from onnxprune.cli import main
from onnxprune.errors import UserError

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))


def _demo():
    return onnx.load(DEMO)


def _save_external(model, folder, location="w.bin"):
    """``folder/model.onnx`` with every weight in ``folder/location``."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location=location, size_threshold=0)
    return folder / "model.onnx"


def _relocate(model_path, location, out_path):
    """A copy of an external-data model whose every tensor points at ``location``."""
    model = onnx.load(model_path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, out_path)
    return out_path


def _broken_models(tmp):
    """name -> (path of a broken input, words the message must contain)."""
    cases = {}
    garbage = tmp / "garbage.onnx"
    garbage.write_bytes(bytes(range(256)) * 8)
    cases["undecodable protobuf"] = (garbage, "not a valid ONNX model")

    model = _demo()
    model.graph.node[0].input[0] = "ghost"
    onnx.save(model, tmp / "checker.onnx")
    cases["fails onnx.checker"] = (tmp / "checker.onnx", "fails onnx.checker")

    model = _demo()
    model.opset_import[0].version = 99
    onnx.save(model, tmp / "opset.onnx")
    cases["unknown opset"] = (tmp / "opset.onnx", "opset 99")

    model = _demo()
    model.graph.node[1].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, tmp / "domain.onnx")
    cases["unknown domain"] = (tmp / "domain.onnx", "ONNX Runtime cannot load the input")

    good = _save_external(_demo(), tmp / "ext")
    missing = tmp / "missing"
    missing.mkdir()
    shutil.copy(good, missing / "model.onnx")
    cases["external data missing"] = (missing / "model.onnx", "no such file beside the model")

    short = tmp / "short"
    short.mkdir()
    shutil.copy(good, short / "model.onnx")
    (short / "w.bin").write_bytes((tmp / "ext" / "w.bin").read_bytes()[:100])
    cases["external data short"] = (short / "model.onnx", "too short")

    (tmp / "secret.bin").write_bytes((tmp / "ext" / "w.bin").read_bytes())
    cases["external data ../"] = (_relocate(good, "../secret.bin", tmp / "ext" / "up.onnx"),
                                  "outside the model's folder")
    cases["external data absolute"] = (
        _relocate(good, str(tmp / "secret.bin"), tmp / "ext" / "abs.onnx"), "absolute path")
    os.symlink(tmp / "secret.bin", tmp / "ext" / "link.bin")
    cases["external data symlink out"] = (_relocate(good, "link.bin", tmp / "ext" / "ln.onnx"),
                                          "outside the model's folder")
    return cases


CASES = ["undecodable protobuf", "fails onnx.checker", "unknown opset", "unknown domain",
         "external data missing", "external data short", "external data ../",
         "external data absolute", "external data symlink out"]


def _snapshot(tmp):
    return {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file() and not p.is_symlink()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("case", CASES)
def test_a_broken_model_is_the_users_error(case, tmp_path, capsys):
    path, says = _broken_models(tmp_path)[case]
    before = _snapshot(tmp_path)
    out = tmp_path / "out.onnx"
    assert main(["prune", str(path), "-o", str(out)]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error:") and says in err, err
    assert not out.exists()
    assert _snapshot(tmp_path) == before, "a failed run must write nothing and change nothing"


def test_the_api_raises_the_same_one_line_user_error(tmp_path):
    path, _ = _broken_models(tmp_path)["unknown domain"]
    with pytest.raises(UserError, match="ONNX Runtime cannot load the input"):
        pipeline.prune(str(path))


def test_external_data_inside_the_folder_loads(tmp_path):
    (tmp_path / "ext" / "weights").mkdir(parents=True)
    path = _save_external(_demo(), tmp_path / "ext", location="weights/w.bin")
    assert main(["prune", str(path), "-o", str(tmp_path / "out.onnx")]) == 0


@pytest.mark.parametrize("case", ["other name", "wrong shape", "wrong dtype"])
def test_calibration_data_that_does_not_fit(case, tmp_path, capsys):
    data = tmp_path / "calib.npz"
    x = np.zeros((4, 1, 8, 8), np.float32)
    arrays = {"other name": {"pixels": x}, "wrong shape": {"input": x[:, :, :5]},
              "wrong dtype": {"input": x.astype(np.int64)}}[case]
    np.savez(data, **arrays)
    out = tmp_path / "out.onnx"
    assert main(["prune", DEMO, "-o", str(out), "--criterion", "obs", "--calib",
                 str(data)]) == 2
    assert "calib.npz" in _one_line_error(capsys)
    assert not out.exists()


def test_an_unnamed_array_feeds_the_one_input(tmp_path):
    np.savez(tmp_path / "calib.npz", np.zeros((4, 1, 8, 8), np.float32))
    assert main(["prune", DEMO, "-o", str(tmp_path / "out.onnx"), "--criterion", "obs",
                 "--calib", str(tmp_path / "calib.npz")]) == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a folder nobody can write")
@pytest.mark.parametrize("option", ["-o", "--report"])
def test_an_unwritable_output_fails_before_any_work(option, tmp_path, capsys, monkeypatch):
    """/proc takes no new file, even for root; the error comes before pruning starts."""
    monkeypatch.setattr(pipeline, "prune", lambda *a, **k: pytest.fail("pruned anyway"))
    args = ["prune", DEMO, option, "/proc/onnxprune-test.onnx"]
    if option == "--report":
        args += ["-o", str(tmp_path / "out.onnx")]
    assert main(args) == 2
    assert "cannot write to /proc" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_target_out_of_range(tmp_path, capsys):
    for option, value in (("--target-macs", "1.5"), ("--target-params", "0"),
                          ("--target-latency", "-1")):
        assert main(["prune", DEMO, "-o", str(tmp_path / "o.onnx"), option, value]) == 2
        assert option in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_internal_error_says_how_to_report_it_and_writes_nothing(tmp_path, capsys,
                                                                    monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("an invariant broke\nsecond line of detail")

    monkeypatch.setattr(pipeline, "prune", broken)
    out = tmp_path / "out.onnx"
    assert main(["prune", DEMO, "-o", str(out)]) == 1
    err = _one_line_error(capsys)
    assert err.startswith("internal error: RuntimeError: an invariant broke")
    assert "report" in err
    assert not out.exists()


def test_in_place_replaces_the_input_only_when_asked(tmp_path, capsys):
    path = tmp_path / "model.onnx"
    shutil.copy(DEMO, path)
    before = path.read_bytes()
    assert main(["prune", str(path), "-o", str(path)]) == 2
    assert "--in-place" in _one_line_error(capsys)
    assert main(["prune", str(path), "--in-place", "-o", str(tmp_path / "x.onnx")]) == 2
    assert path.read_bytes() == before
    assert main(["prune", str(path), "--in-place"]) == 0
    assert len(path.read_bytes()) < len(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]   # no temporary left
    onnx.checker.check_model(str(path), full_check=True)


@pytest.mark.parametrize("case", ["fails onnx.checker", "unknown opset"])
def test_inspect_refuses_a_model_that_fails_the_checker(case, tmp_path, capsys):
    path, says = _broken_models(tmp_path)[case]
    assert main(["inspect", str(path)]) == 2
    assert says in _one_line_error(capsys)


@pytest.mark.parametrize("command", [["bench"], ["compare", "SAME"], ["sweep", "--ratios", "0.5"],
                                     ["sensitivity"]])
def test_other_commands_refuse_a_model_onnx_runtime_cannot_load(command, tmp_path, capsys):
    path, _ = _broken_models(tmp_path)["unknown domain"]
    args = [command[0], str(path)] + [str(path) if a == "SAME" else a for a in command[1:]]
    before = _snapshot(tmp_path)
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error:") and "cannot load" in err, err
    assert "domain.onnx" in err or "the input model" in err, "it says which model"
    assert _snapshot(tmp_path) == before
