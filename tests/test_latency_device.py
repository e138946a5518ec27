"""Latency tables built on another machine (issue 17): ``onnxprune latency-bundle`` writes the
one-node models, ``device_timer.py`` times them with onnxruntime alone (here in a process
where onnx and onnxprune cannot be imported), and ``--latency-device`` predicts from the
result, timing nothing locally."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import UserError
from onnxprune.pipeline.latency_bundle import write_bundle
from onnxprune.runtime.layer_table import grid_between

from .test_latency import stream_model

# The device has onnxruntime and numpy only: onnx and onnxprune fail to import in it.
DEVICE = ("import runpy, sys\n"
          "sys.modules['onnx'] = sys.modules['onnxprune'] = None\n"
          "sys.argv = sys.argv[1:]\n"
          "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def time_on_device(folder) -> dict:
    script = folder / "device_timer.py"
    subprocess.run([sys.executable, "-I", "-c", DEVICE, str(script), str(folder)], check=True,
                   capture_output=True, text=True)
    return json.loads((folder / "table.json").read_text())


@pytest.fixture(scope="module")
def device_table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("device") / "bundle"
    summary = write_bundle(stream_model(), str(folder), round_to=8, levels=4)
    assert summary.layers == 4 and summary.streams == 5 and summary.models > 20
    assert (folder / "device_timer.py").exists() and not list(folder.glob("*.bin"))
    table = time_on_device(folder)
    return folder, table


@pytest.fixture(scope="module")
def steady_table(device_table, tmp_path_factory):
    """The device's table with each timing replaced by one that follows the one-node model's
    MACs and tensor sizes: prediction is tested here, and real timings of microsecond models
    on a loaded CI machine can order two widths the wrong way."""
    from onnxprune.runtime import count_cost

    folder, timed = device_table
    table = json.loads(json.dumps(timed))        # a copy: the timed table stays as timed
    steady = tmp_path_factory.mktemp("steady")
    bundle = json.loads((folder / "bundle.json").read_text())
    files = {e["key"]: folder / e["file"] for e in bundle["entries"]}
    for timings in table["sections"].values():
        for key in timings:
            model = onnx.load(str(files[key]), load_external_data=False)
            sizes = sum(int(np.prod([d.dim_value for d in v.type.tensor_type.shape.dim]))
                        for v in list(model.graph.input) + list(model.graph.output))
            timings[key] = 1e-6 + 1e-9 * (count_cost(model).macs + sizes)
    (steady / "table.json").write_text(json.dumps(table))
    return steady, table


def test_the_device_times_every_model_with_onnxruntime_alone(device_table):
    folder, table = device_table
    bundle = json.loads((folder / "bundle.json").read_text())
    (section, timings), = table["sections"].items()
    assert "CPUExecutionProvider | 1 threads" in section
    assert set(timings) == {e["key"] for e in bundle["entries"]}
    assert all(t > 0 for t in timings.values())
    assert table["devices"][section]["grids"] == bundle["grids"]
    assert not list(folder.glob("*.bin"))          # the random weights are cleaned up


@pytest.mark.parametrize("allocation", ["uniform", "latency"])
def test_a_target_is_predicted_from_the_device_table(steady_table, allocation):
    folder, table = steady_table
    section = next(iter(table["sections"]))
    pruned, report = onnxprune.prune(
        stream_model(), target_latency=0.7, round_to=8, latency_table=str(folder / "table.json"),
        latency_device=section.split(" | ")[1], strategy=onnxprune.Strategy(
            "l2", allocation=allocation))
    target = report["target"]
    assert target["device"] == section and target["measured"] is None
    assert target["table_timed"] == 0 and target["table_reused"] > 0    # nothing timed here
    assert target["met"] == (target["planned"] <= 0.7) and target["planned"] < 1.0
    assert report["check"]["ok"]


def test_the_cli_names_the_device_and_times_nothing(steady_table, tmp_path, capsys):
    folder, table = steady_table
    model = tmp_path / "m.onnx"
    onnx.save(stream_model(), model)
    code = main(["prune", str(model), "-o", str(tmp_path / "p.onnx"), "--round-to", "8",
                 "--target-latency", "0.7", "--latency-table", str(folder / "table.json"),
                 "--latency-device", "onnxruntime"])
    out = capsys.readouterr().out
    assert code == 0 and "latency predicted from the timings of" in out
    assert "not timed here" in out


def test_device_options_say_what_is_wrong(device_table, tmp_path):
    folder, _ = device_table
    with pytest.raises(UserError, match="--latency-table too"):
        onnxprune.prune(stream_model(), target_latency=0.7, latency_device="x")
    with pytest.raises(UserError, match="0 device sections"):
        onnxprune.prune(stream_model(), target_latency=0.7, round_to=8,
                        latency_table=str(folder / "table.json"), latency_device="no such CPU")
    with pytest.raises(UserError, match="exists"):
        write_bundle(stream_model(), str(folder), round_to=8)
    from .test_steps_and_costs import conv_stack

    with pytest.raises(UserError, match="has no timing"):      # a bundle of another model
        onnxprune.prune(conv_stack(), target_latency=0.7, round_to=8,
                        latency_table=str(folder / "table.json"), latency_device="onnxruntime")


def test_the_cli_writes_a_bundle(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(stream_model(), model)
    assert main(["latency-bundle", str(model), str(tmp_path / "b"), "--round-to", "8",
                 "--levels", "2"]) == 0
    assert "device_timer.py" in capsys.readouterr().out
    assert main(["latency-bundle", str(model), str(tmp_path / "b")]) == 2     # exists


def test_grid_reading_is_bilinear_on_a_full_grid_and_by_size_otherwise():
    plane = [((ci, co), 1.0 + 2 * ci + 3 * co) for ci in (8, 16, 32) for co in (8, 32)]
    assert grid_between(plane, (24, 16)) == pytest.approx(1 + 48 + 48)
    assert grid_between(plane, (64, 64)) == pytest.approx(1 + 64 + 96)     # held at the end
    diagonal = [((c, c), float(c * c)) for c in (8, 16, 32)]                 # depthwise
    assert grid_between(diagonal, (24, 24)) == pytest.approx(576)          # c_in · c_out
    sizes = [((100,), 1.0), ((200,), 3.0)]                                   # a stream node
    assert grid_between(sizes, (150,)) == pytest.approx(2.0)
