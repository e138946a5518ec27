"""A small CNN trained here on scikit-learn's digits, pruned at 30% and 50%.

The oracle must hold on real (trained) weights, and the accuracy before and after is reported
(run ``pytest -s`` to see it; numbers are in benchmarks/RESULTS.md). L2 magnitude without any
compensation or fine-tuning is the baseline the criteria issue improves on, so accuracy is
reported, not required to stay high.
"""

from __future__ import annotations

import pytest

import onnxprune

from .oracle import assert_oracle

pytest.importorskip("torch")
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from models.digits_cnn import export, load_split, train

    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    export(train(epochs=20), path, keep_bn=True)
    return path, load_split()


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_trained_digits_cnn_pruned(trained, ratio):
    from models.digits_cnn import accuracy

    path, (_, _, x_test, y_test) = trained
    dense = accuracy(path, x_test, y_test)
    assert dense >= 0.95
    stats = assert_oracle(str(path), ratio=ratio, round_to=1)
    pruned, report = onnxprune.prune(str(path), ratio=ratio, round_to=1)
    after = accuracy(pruned, x_test, y_test)
    macs = report["macs"]["after"] / report["macs"]["before"]
    print(f"\ndigits CNN ratio {ratio}: accuracy {dense:.4f} -> {after:.4f}, "
          f"MACs kept {macs:.1%}, params {stats['params'][0]} -> {stats['params'][1]}")
    assert 0.0 <= after <= 1.0
    assert report["check"]["ok"] and not report["barriers"]
