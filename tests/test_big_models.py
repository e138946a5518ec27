"""Models whose weights live in external files, up to and over 2 GB (issue 6): the weights
stay in files from load to save (memory-mapped when read, written to files when changed),
the checks run from those files, and the output gets its own data file. Peak memory on a
2.3 GiB model is measured by ``python -m benchmarks.big_model`` (RESULTS.md), not here."""

from __future__ import annotations

import gc
import hashlib
import os
import pickle
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import pipeline
from onnxprune.cli import main
from onnxprune.errors import UserError
from onnxprune.graph import ModelGraph
from onnxprune.io import load_model, save_model
from onnxprune.io.weights import MIN_BYTES, STORE_KEY, WeightStore, is_mapped
from onnxprune.runtime import session

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _external_demo(folder):
    folder.mkdir()
    onnx.save(onnx.load(DEMO), folder / "model.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    return folder / "model.onnx"


def _outputs(model, feeds):
    """Outputs of a model file (its data beside it) or of an in-memory model."""
    data = str(model) if not isinstance(model, onnx.ModelProto) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_external_weights_stay_in_files_from_load_to_save(tmp_path):
    path = _external_demo(tmp_path / "in")
    before = _digest(tmp_path / "in")
    model = load_model(path)
    graph = ModelGraph(model, infer_shapes=False)
    assert graph.store is not None and is_mapped(graph.const("fc1.weight"))

    pruned, report = pipeline.prune(model, ratio=0.5, round_to=1)
    assert report["check"]["ok"] and report["check"]["how"] == pipeline.CHECKED_FROM_FILES
    fc1 = next(t for t in pruned.graph.initializer if t.name == "fc1.weight")
    assert fc1.data_location == TensorProto.EXTERNAL and fc1.dims[0] == 32   # sliced, in a file
    # the masked original's files went after verification: the pruned model's remain
    store = WeightStore.of(pruned)
    in_use = {e.value for t in pruned.graph.initializer for e in t.external_data
              if e.key == "location"}
    assert {p.name for p in store.folder.iterdir()} == in_use | {"input0.data"}

    (tmp_path / "out").mkdir()
    out = save_model(pruned, tmp_path / "out" / "pruned.onnx")
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.onnx", "pruned.onnx.data"]
    assert STORE_KEY not in {p.key for p in onnx.load(out, load_external_data=False)
                             .metadata_props}
    onnx.checker.check_model(str(out), full_check=True)
    # the same model as pruning a copy held wholly in memory gives
    in_memory, memory_report = pipeline.prune(onnx.load(DEMO), ratio=0.5, round_to=1)
    assert memory_report["check"]["how"].startswith("in memory")
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 1, 8, 8), np.float32)}
    np.testing.assert_array_equal(_outputs(out, feeds)[0], _outputs(in_memory, feeds)[0])
    assert _digest(tmp_path / "in") == before       # the input is untouched


def test_the_masked_original_of_a_stored_model_reads_its_weights_where_they_are(
        tmp_path, monkeypatch):
    """Its big weights are read through Where(kept, weight, 0) from the input's own file, none
    written zeroed; it computes what the in-memory masked original (zeroed weights) does."""
    from onnxprune.rewrite import apply

    monkeypatch.setattr(apply, "IN_PLACE_BYTES", 1)   # the demo's weights are all small
    stored = load_model(_external_demo(tmp_path / "in"))
    masked = pipeline.masked_original(stored, ratio=0.5, round_to=1)[1]
    in_memory = pipeline.masked_original(onnx.load(DEMO), ratio=0.5, round_to=1)[1]
    weights = {t.name for t in onnx.load(DEMO).graph.initializer}
    wheres = [n for n in masked.graph.node if n.op_type == "Where"]
    assert len(wheres) >= 4 and all(n.input[1] in weights for n in wheres)
    assert {e.value for t in masked.graph.initializer for e in t.external_data
            if e.key == "location"} == {"input0.data"}       # the input's file, nothing new
    feeds = {"input": np.random.default_rng(0).standard_normal((4, 1, 8, 8), np.float32)}
    np.testing.assert_allclose(session(masked).run(None, feeds)[0],
                               _outputs(in_memory, feeds)[0], rtol=1e-5, atol=1e-6)
    report = pipeline.prune(stored, ratio=0.5, round_to=1)[1]
    assert report["check"]["ok"] and report["check"]["max_rel_error"] < 1e-5


def test_a_save_that_hands_over_moves_the_pruned_weights_rather_than_copy_them(tmp_path):
    """The CLI's save: the rewrite's pack (its new weights, in one file) becomes the output's
    data file and leaves the store; the output is the same model a copying save writes."""
    pruned, report = pipeline.prune(load_model(_external_demo(tmp_path / "in")), ratio=0.5,
                                    round_to=1)
    assert report["check"]["ok"]
    store = WeightStore.of(pruned)
    packs = {p.name for p in store.folder.iterdir() if p.name.startswith("wp")}
    assert len(packs) == 1
    pack = store.folder / packs.pop()
    pack_bytes = pack.read_bytes()
    (tmp_path / "copied").mkdir()
    (tmp_path / "moved").mkdir()
    copied = save_model(pruned, tmp_path / "copied" / "pruned.onnx")
    assert pack.stat().st_nlink == 1        # a plain save copies
    moved = save_model(pruned, tmp_path / "moved" / "pruned.onnx", hand_over=True)
    data = tmp_path / "moved" / "pruned.onnx.data"
    assert not pack.exists() and data.stat().st_nlink == 1
    assert data.read_bytes()[:len(pack_bytes)] == pack_bytes    # the pack, the rest after it
    onnx.checker.check_model(str(moved), full_check=True)
    feeds = {"input": np.random.default_rng(0).standard_normal((2, 1, 8, 8), np.float32)}
    np.testing.assert_array_equal(_outputs(moved, feeds)[0], _outputs(copied, feeds)[0])


def test_a_pack_a_save_links_is_never_written_again(tmp_path):
    """While a saved data file and the store's pack are one file, new weights go to a new
    pack: the saved file never changes."""
    from onnxprune.io.weights import Pack

    store = WeightStore()
    pack = Pack(store)
    first = store.write("a", np.ones(2048, np.float32), pack)
    location = first.external_data[0].value
    saved = tmp_path / "saved.data"
    os.link(store.folder / location, saved)
    before = saved.read_bytes()
    second = store.write("b", np.zeros(2048, np.float32), pack)
    assert second.external_data[0].value != location and saved.read_bytes() == before
    offsets = [int(e.value) for t in (first, second) for e in t.external_data
               if e.key == "offset"]
    assert all(o % 4096 == 0 for o in offsets)
    store.close()


def _over_2gb(folder):
    """A model whose declared weights pass 2 GB: a small MLP that prunes, beside a lookup
    table of 2.16 GB in a sparse file (nothing is written to disk for it, and it is read only
    where it is looked up)."""
    folder.mkdir()
    table = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[540_000_000],
                        data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "table.bin"), ("offset", "0"), ("length", "2160000000")):
        table.external_data.add(key=key, value=value)
    with open(folder / "table.bin", "wb") as f:
        f.truncate(2_160_000_000)
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 64), np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((64, 8), np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
         helper.make_node("Gather", ["table", "ids"], ["looked_up"], name="lookup")],
        "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("looked_up", TensorProto.FLOAT, [3])], [w1, w2, table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    return folder / "model.onnx"


def test_a_model_over_2gb_prunes_and_is_written_with_its_data(tmp_path):
    path = _over_2gb(tmp_path / "in")
    out = tmp_path / "out.onnx"
    try:
        assert main(["prune", str(path), "-o", str(out), "--ratio", "0.5",
                     "--round-to", "1"]) == 0
        data = (tmp_path / "out.onnx.data").stat()
        assert data.st_size >= 2_160_000_000
        assert data.st_blocks * 512 < 2**20, "the table's zeros stay holes (sparse copy)"
        onnx.checker.check_model(str(out), full_check=True)
        saved = onnx.load(str(out), load_external_data=False)
        dims = {t.name: list(t.dims) for t in saved.graph.initializer}
        assert dims["w1"] == [8, 32] and dims["w2"] == [32, 8]
        assert dims["table"] == [540_000_000]
        feeds = {"x": np.ones((1, 8), np.float32), "ids": np.array([0, 7, 539_999_999])}
        assert _outputs(out, feeds)[1].tolist() == [0.0, 0.0, 0.0]
    finally:    # pytest keeps recent tmp folders: do not leave 2 GB in each
        (tmp_path / "out.onnx.data").unlink(missing_ok=True)


def test_finding_a_models_linear_readers_copies_no_weight(tmp_path, monkeypatch):
    """Which tensors linear layers read (calibration's capture list, ``--recover-features``)
    comes from shapes alone: a float64 copy of each weight here cost a 1.1B decoder 7 GiB."""
    from onnxprune.groups import find_consumers
    from onnxprune.importance import consumed_inputs
    from onnxprune.pipeline.recover import kept_channels
    from onnxprune.rules import LinearView

    a = pipeline.analyze_model(load_model(_external_demo(tmp_path / "in")))
    readers = list(find_consumers(a.analysis))
    big = [c for c in readers if c.view.stored.nbytes >= MIN_BYTES]     # smaller: inline
    assert big and all(is_mapped(c.view.stored) for c in big)

    def refuse(view):
        raise AssertionError("a weight was copied")
    monkeypatch.setattr(LinearView, "weight", property(refuse))
    assert set(consumed_inputs(a.analysis)) >= {c.input_name for c in readers}
    assert kept_channels(a, np.arange(len(a.roots)) % 2 == 0)      # every other channel


def test_an_in_memory_model_with_external_references_is_refused():
    model = onnx.load(DEMO)
    onnx.external_data_helper.convert_model_to_external_data(model, location="w.bin",
                                                             size_threshold=0)
    with pytest.raises(UserError, match="keeps weights in external files: pass its path"):
        pipeline.prune(model)


def test_a_store_named_in_a_file_is_ignored(tmp_path):
    """Only this process's stores are honoured: a file cannot point the tool at a folder."""
    model = onnx.load(DEMO)
    model.metadata_props.add(key=STORE_KEY, value=str(tmp_path))
    onnx.save(model, tmp_path / "model.onnx")
    loaded = load_model(tmp_path / "model.onnx")
    assert WeightStore.of(loaded) is None
    assert STORE_KEY not in {p.key for p in loaded.metadata_props}


@pytest.mark.parametrize("strategy, calib", [
    (pipeline.Strategy("obspa"), None),                                  # compensation writes
    (pipeline.Strategy("wanda", compensate="obs"), "random"),            # capture from files
    (pipeline.Strategy("taylor"), "random"),                             # torch reads them in
])
def test_every_criterion_works_from_files(strategy, calib, tmp_path):
    path = _external_demo(tmp_path / "in")
    pruned, report = pipeline.prune(str(path), ratio=0.5, strategy=strategy, calib=calib)
    assert report["check"]["ok"]
    assert WeightStore.of(pruned) is not None
    out = save_model(pruned, tmp_path / "pruned.onnx")
    onnx.checker.check_model(str(out), full_check=True)


def test_a_sweep_keeps_no_copy_of_the_models_it_saved(tmp_path):
    """Each saved model is timed from its file, so its weight files in the store go: a sweep
    over a big model does not pile up a copy per ratio."""
    from onnxprune.io import weights
    from onnxprune.evaluate.bench import BenchOptions
    from onnxprune.evaluate.sweep import sweep

    path = _external_demo(tmp_path / "in")
    before = set(weights._STORES)
    result = sweep(str(path), [0.25, 0.5], out_dir=tmp_path / "out", bench=BenchOptions(runs=3))
    assert [row["error"] for row in result["rows"]] == [None, None, None]
    assert len(list((tmp_path / "out").iterdir())) == 4     # two models, each with its data
    new = [weights._STORES[k] for k in set(weights._STORES) - before]
    assert new and all(sorted(p.name for p in s.folder.iterdir()) == ["input0.data"]
                       for s in new)


def test_release_weights_frees_the_store_now(tmp_path):
    pruned, _ = pipeline.prune(str(_external_demo(tmp_path / "in")), ratio=0.5)
    out = save_model(pruned, tmp_path / "pruned.onnx")
    folder = WeightStore.of(pruned).folder
    onnxprune.release_weights(pruned)
    assert not folder.exists() and WeightStore.of(pruned) is None
    with pytest.raises(UserError, match="keeps weights in external files: pass its path"):
        pipeline.prune(pruned)
    onnx.checker.check_model(str(out), full_check=True)     # what was saved stays


def test_the_users_file_still_loads_with_onnx_while_its_pruned_copy_lives(tmp_path):
    """A data file under ``LINK_BYTES`` is copied into the weight store, not hard-linked:
    onnx refuses a data file with two links, which would make the user's own model unloadable
    for as long as the process that pruned it lives."""
    path = _external_demo(tmp_path / "in")
    pruned, _ = pipeline.prune(str(path), ratio=0.5, round_to=1)
    assert WeightStore.of(pruned) is not None
    assert (tmp_path / "in" / "model.onnx.data").stat().st_nlink == 1
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_big_gram_matrices_spill_to_files_and_big_batches_run_in_slices(monkeypatch):
    """A 1B decoder's calibration: batches whose watched tensors pass ``RUN_BYTES`` run a few
    samples at a time, and Gram matrices past ``SPILL_BYTES`` accumulate in float32 files.
    Both limits forced down on the demo give the statistics of the plain capture."""
    from onnxprune.calibration import capture, load_calibration
    from onnxprune.calibration.hessian import gram_inputs
    from onnxprune.importance import consumed_inputs

    a = pipeline.analyze_model(onnx.load(DEMO))
    maps, grams = consumed_inputs(a.analysis), gram_inputs(a.analysis)
    batches = load_calibration("random", a.model, batch_size=8, samples=16)
    plain = capture.capture_stats(a.model, maps, batches, grams)
    assert not any(m.spilled for m in plain.tensors.values())

    runs = []

    def counting(model):
        sess = ort_session(model)
        return type("Counted", (), {"get_inputs": sess.get_inputs,
                                    "run": lambda self, *args: runs.append(1) or sess.run(*args)})()
    ort_session = capture.session
    monkeypatch.setattr(capture, "session", counting)
    monkeypatch.setattr(capture, "RUN_BYTES", 1)            # one sample per run
    monkeypatch.setattr(capture, "SPILL_BYTES", 0)          # every Gram matrix in a file
    small = capture.capture_stats(a.model, maps, batches, grams)
    assert len(runs) == 16 and small.samples == plain.samples == 16
    spilled = [n for n, m in small.tensors.items() if m.spilled]
    assert spilled and set(spilled) == {n for n, m in plain.tensors.items() if m.gram is not None}
    for name, m in small.tensors.items():
        want = plain.tensors[name]
        np.testing.assert_allclose(m.sum_sq, want.sum_sq, rtol=1e-12)
        if want.gram is not None:
            np.testing.assert_allclose(m.gram, want.gram, rtol=1e-5, atol=1e-5 * np.abs(
                want.gram).max())
        if want.held_gram is not None:      # every second batch, held out for OBS
            assert m.held_count == want.held_count == m.count // 2     # rows of batch 2
            np.testing.assert_allclose(m.held_gram, want.held_gram, rtol=1e-5,
                                       atol=1e-5 * np.abs(want.held_gram).max())
    moved = pickle.loads(pickle.dumps(small))       # to a worker: the Gram travels inline
    name = spilled[0]
    assert not moved.tensors[name].spilled
    np.testing.assert_array_equal(moved.tensors[name].gram, small.tensors[name].gram)
    folder = Path(small.spill.name)
    del small, moved
    gc.collect()
    assert not folder.exists(), "the files go with the statistics"


@pytest.mark.parametrize("shape, axes", [((3, 5, 4, 4), (1,)), ((2, 7, 6), (2,)),
                                         ((2, 3, 4, 5), (1, 3))])
def test_moments_widened_a_few_rows_at_a_time_are_the_plain_sums(shape, axes, monkeypatch):
    """Per-channel moments reduce float32 activations a few rows at a time in float64
    (``row_moments``: a 1B decoder's MLP inputs, whole in float64, took six times as long):
    the same sums as float64 over every other axis, zeros counted, in the channel axes' order."""
    from onnxprune.calibration import capture
    from onnxprune.graph import ChannelMap

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    x[x < -1.0] = 0.0
    dims = [shape[a] for a in axes]
    cmap = ChannelMap(len(shape), axes, np.arange(int(np.prod(dims))).reshape(dims))
    monkeypatch.setattr(capture, "CHUNK_VALUES", 7)      # chunks end inside and across rows
    m = capture.Moments()
    m.add(x, cmap, gram=False)
    m.add(x[::-1].copy(), cmap, gram=False)
    other, wide = tuple(a for a in range(x.ndim) if a not in axes), x.astype(np.float64)
    for got, want in [(m.sum, wide.sum(other)), (m.sum_sq, np.square(wide).sum(other)),
                      (m.sum_abs, np.abs(wide).sum(other)), (m.zeros, (x == 0).sum(other))]:
        np.testing.assert_allclose(got, 2 * want, rtol=1e-12, atol=1e-12)
    assert m.count == 2 * x.size // cmap.labels.size and m.zeros.sum() > 0
