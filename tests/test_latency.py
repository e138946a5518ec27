"""Latency measurement on ORT CPU and the per-layer latency table (tiny hand-made graphs)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.runtime import layer_table
from onnxprune.runtime import timing as lat
from onnxprune.runtime import LayerLatencyTable, Timing, measure_latency

from .builder import GraphBuilder


def mixed_model():
    """Conv, grouped Conv, depthwise Conv, Gemm (transB), MatMul with a constant weight, and a
    MatMul of two activations, which is not a layer."""
    b = GraphBuilder()
    y = b.op("Relu", [b.conv("x", 8, 16)])                        # node 0 (Conv), 1 (Relu)
    y = b.conv(y, 16, 32, group=4)                                 # node 2
    y = b.conv(y, 32, 32, group=32)                                # node 3
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])])          # nodes 4, 5
    y = b.op("Gemm", [y, b.weight(10, 32), b.weight(10)], transB=1)  # node 6
    y = b.op("MatMul", [y, b.weight(10, 6)])                       # node 7
    y = b.op("MatMul", [y, "z"])                                   # node 8
    return b.model({"x": [1, 8, 10, 10], "z": [6, 4]}, [y])


def twin_conv_model():
    """Two convs of the same signature, as in repeated residual blocks."""
    b = GraphBuilder()
    y = b.conv(b.conv("x", 16, 16), 16, 16)
    return b.model({"x": [1, 16, 12, 12]}, [y])


def test_timing_is_ordered_and_positive():
    t = measure_latency(mixed_model(), warmup=1, runs=20)
    assert 0 < t.min <= t.median <= t.p90
    assert t.to_dict() == {"median": t.median, "p90": t.p90, "min": t.min, "runs": 20}


def test_runs_are_respected_and_budget_is_bounded():
    model = mixed_model()
    assert measure_latency(model, warmup=0, runs=7).runs == 7
    assert measure_latency(model, warmup=0, budget_s=0.0).runs == lat.MIN_RUNS
    assert measure_latency(model, warmup=0, budget_s=30.0).runs == lat.MAX_RUNS
    with pytest.raises(ValueError):
        measure_latency(model, runs=0)


def test_explicit_feeds_are_used():
    model = mixed_model()
    feeds = {"x": np.zeros((1, 8, 10, 10), np.float32), "z": np.ones((6, 4), np.float32)}
    assert measure_latency(model, feeds, warmup=0, runs=3).runs == 3
    with pytest.raises(Exception, match="z"):
        measure_latency(model, {"x": feeds["x"]}, warmup=0, runs=1)


def test_table_lists_layers_with_dense_widths():
    table = LayerLatencyTable(mixed_model())
    assert table.layers() == {0: (8, 16), 2: (16, 32), 3: (32, 32), 6: (32, 10), 7: (10, 6)}


def test_every_layer_kind_runs_narrowed():
    table = LayerLatencyTable(mixed_model(), budget_s=0.0)
    for i, (c_in, c_out) in table.layers().items():
        narrow = (max(c_in // 2, 1), max(c_out // 2, 1))
        assert table.latency(i, *narrow) > 0, i
    assert table.latency(3, 16, 16) > 0           # depthwise: group follows c_in
    assert table.latency(3, 16, 32) > 0           # depthwise with a channel multiplier


@pytest.mark.parametrize("node,c_in,c_out", [(2, 10, 32), (2, 16, 30), (3, 16, 24), (0, 0, 8)])
def test_impossible_width_raises(node, c_in, c_out):
    table = LayerLatencyTable(mixed_model())
    with pytest.raises(ValueError):
        table.latency(node, c_in, c_out)


def test_unknown_node_raises():
    with pytest.raises(KeyError):
        LayerLatencyTable(mixed_model()).latency(1, 16, 16)   # the Relu


def test_same_signature_is_measured_once(monkeypatch):
    calls = []

    def fake(model, *args, **kwargs):
        calls.append(model)
        seconds = 1e-3 * len(calls)
        return Timing(median=seconds, p90=1.0, min=seconds, runs=10)

    monkeypatch.setattr(layer_table, "measure_latency", fake)
    table = LayerLatencyTable(twin_conv_model())
    assert table.layers() == {0: (16, 16), 1: (16, 16)}
    first = table.latency(0, 16, 16)
    assert table.latency(1, 16, 16) == first and len(calls) == 1
    assert table.dense_total() == 2 * table.cost(0, 16, 16)
    assert len(calls) == 2            # and the empty run once, for the floor
    assert table.latency(1, 16, 8) != first and len(calls) == 3
    assert table.measurements == 3


def test_narrower_conv_is_faster():
    b = GraphBuilder()
    model = b.model({"x": [1, 256, 28, 28]}, [b.conv("x", 256, 256, bias=False)])
    # A longer budget than the table's default (the median of ~30 runs, not of 10), and the
    # fastest of three tables' medians, taken in turns: a burst of work on the other test
    # worker only adds time, and once swung one median (4.9 ms for the narrow conv).
    dense, narrow = [], []
    for _ in range(3):
        table = LayerLatencyTable(model, budget_s=0.3)
        dense.append(table.latency(0, 256, 256))
        narrow.append(table.latency(0, 256, 64))
    assert min(narrow) < 0.6 * min(dense)   # 4x fewer MACs; a generous margin for noise


def stream_model():
    """The weightless nodes of a depthwise net around three convs: a ReLU ONNX Runtime folds
    into its Conv, a SiLU (x·sigmoid(x), folded into one kernel), a squeeze-excitation gate,
    a Concat, a BatchNormalization after it (no Conv to fold into) and integer shape
    arithmetic, which is no data stream."""
    b = GraphBuilder()
    a = b.op("Relu", [b.conv("x", 8, 16)])                         # 0 Conv, 1 Relu (folds)
    c = b.conv(a, 16, 16, group=16)                                # 2
    s = b.op("Mul", [c, b.op("Sigmoid", [c])])                     # 3 Sigmoid, 4 Mul
    g = b.op("Sigmoid", [b.conv(b.op("GlobalAveragePool", [s]), 16, 16, k=1)])  # 5, 6, 7 folds
    s = b.op("Mul", [s, g])                                        # 8 SE gate
    y = b.bn(b.op("Concat", [a, s], axis=1), 32)                   # 9 Concat, 10 BN
    y = b.conv(y, 32, 4)                                           # 11
    shape = b.op("Shape", [y])                                     # 12
    b.op("Add", [shape, shape])                                    # 13: integers
    return b.model({"x": [1, 8, 12, 12]}, [y])


def test_stream_nodes_are_the_unfolded_weightless_ones():
    table = LayerLatencyTable(stream_model(), streams=True)
    ops = {i: layer.op for i, layer in table.streams().items()}
    assert ops == {4: "Mul", 5: "GlobalAveragePool", 8: "Mul", 9: "Concat",
                   10: "BatchNormalization"}    # the gate's Sigmoid folds into its Conv
    assert LayerLatencyTable(stream_model()).streams() == {}      # opt-in


def timing_by_size(model, *args, **kwargs) -> Timing:
    """A stand-in for ONNX Runtime: a microsecond per input, a nanosecond per input element
    (real timings of microsecond nodes on a busy machine are noise)."""
    inputs = len(model.graph.input)
    elements = sum(int(np.prod([d.dim_value for d in i.type.tensor_type.shape.dim]))
                   for i in model.graph.input)
    seconds = 1e-6 * inputs + 1e-9 * elements
    return Timing(median=seconds, p90=1.0, min=seconds, runs=10)


def test_a_stream_node_is_timed_at_the_shapes_given_and_pays_no_run_of_its_own(monkeypatch):
    calls = []

    def fake(model, *args, **kwargs):
        calls.append(model)
        return timing_by_size(model)

    monkeypatch.setattr(layer_table, "measure_latency", fake)
    table = LayerLatencyTable(stream_model(), streams=True)
    concat = table.streams()[9]
    assert concat.shapes == ((1, 16, 12, 12), (1, 16, 12, 12)) and concat.data_inputs == 2
    dense = table.stream_latency(9, concat.shapes)
    half = table.stream_latency(9, ((1, 8, 12, 12), (1, 8, 12, 12)))
    floor = 2e-6 + 2e-9           # the empty run that binds two one-value inputs
    assert dense == pytest.approx(2e-6 + 1e-9 * 2 * 16 * 144 - floor, rel=1e-6)
    assert half == pytest.approx(2e-6 + 1e-9 * 2 * 8 * 144 - floor, rel=1e-6)
    bn = table.streams()[10]                                       # constants cut to size
    narrow = bn.model(((1, 24, 12, 12),) + ((24,),) * 4, 17)
    assert [list(t.dims) for t in narrow.graph.initializer] == [[24]] * 4
    assert [i.name for i in narrow.graph.input] == ["x0"]


def test_the_plan_narrows_what_stream_nodes_read(monkeypatch):
    from onnxprune.allocation.latency import LatencyPredictor
    from onnxprune.pipeline import analyze_model
    from onnxprune.pipeline.latency_cost import PlanLatency
    from onnxprune.pipeline.plan import plan_for

    monkeypatch.setattr(layer_table, "measure_latency", timing_by_size)  # CI load: noise
    a = analyze_model(stream_model())
    priced = PlanLatency(a, LatencyPredictor(a.model))
    removed = plan_for(a, 0.5, 8).removed
    concat = priced._stream_input(9, 0, (1, 16, 12, 12), removed)
    bn_scale = priced._stream_input(10, 1, (32,), removed)
    assert concat == (1, 8, 12, 12) and bn_scale == (16,)
    assert priced.fraction_of(removed) < 1.0 == pytest.approx(priced.fraction(set()))


def test_a_candidate_is_priced_from_the_settled_plan_as_a_whole_evaluation_prices_it():
    """Latency-aware allocation prices a candidate by re-pricing only the nodes its difference
    from the settled plan touches; that must equal pricing every node, for any candidate
    (more removed, or fewer), layers and stream nodes alike."""
    from onnxprune.allocation.latency import LatencyPredictor
    from onnxprune.pipeline import analyze_model
    from onnxprune.pipeline.latency_cost import PlanLatency

    a = analyze_model(stream_model())
    priced = PlanLatency(a, LatencyPredictor(a.model))
    roots = sorted(priced.group_of)
    rng = np.random.default_rng(0)
    settled = set(rng.choice(roots, len(roots) // 4, replace=False).tolist())
    priced.settle(settled)
    for _ in range(20):
        candidate = set(rng.choice(roots, rng.integers(0, len(roots) // 2),
                                   replace=False).tolist())
        expected = priced.fraction_of(np.isin(a.roots, list(candidate)))
        assert priced.fraction(candidate) == pytest.approx(expected, rel=1e-12)
    assert any(priced.touched[g] & set(priced.streams) for g in priced.touched)
