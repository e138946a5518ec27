"""The digits recipe (models/digits_cnn.py) and the bundled demo model.

No training here: only the data split and the committed
``onnxprune/data/demo_digits.onnx`` are checked (runs in ~1 s, no torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("sklearn")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from models.digits_cnn import accuracy, load_split  # noqa: E402

DEMO = ROOT / "onnxprune" / "data" / "demo_digits.onnx"


@pytest.fixture(scope="module")
def split():
    return load_split()


def test_load_split_shapes_and_dtypes(split):
    x_train, y_train, x_test, y_test = split
    assert x_train.shape == (1257, 1, 8, 8)
    assert x_test.shape == (540, 1, 8, 8)
    assert y_train.shape == (1257,)
    assert y_test.shape == (540,)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert np.issubdtype(y_train.dtype, np.integer) and np.issubdtype(y_test.dtype, np.integer)
    for x in (x_train, x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert x.max() == 1.0  # 16/16 occurs
    # stratified: every class present in both parts in roughly equal share
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    frac = np.bincount(y_test, minlength=10) / (
        np.bincount(y_test, minlength=10) + np.bincount(y_train, minlength=10)
    )
    assert np.all(np.abs(frac - 0.3) < 0.02)


def test_load_split_is_fixed(split):
    again = load_split()
    for a, b in zip(split, again):
        np.testing.assert_array_equal(a, b)
    other = load_split(seed=1)
    assert not np.array_equal(split[3], other[3])


def test_demo_model_is_valid_and_small():
    assert DEMO.is_file(), f"missing bundled demo model {DEMO}"
    assert DEMO.stat().st_size < 1_000_000
    model = onnx.load(str(DEMO))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")


def test_demo_model_accuracy(split):
    _, _, x_test, y_test = split
    acc = accuracy(DEMO, x_test, y_test)
    assert acc >= 0.9, acc
    # a ModelProto is accepted too and gives the same result
    assert accuracy(onnx.load(str(DEMO)), x_test, y_test) == acc
    # ... and so is a str path
    assert accuracy(str(DEMO), x_test, y_test) == acc
