"""Every zoo model (torchvision × two exporters, YOLOv8n, the onnx light models) pruned at 0.5
passes the full oracle: checker + ORT + same IO, ratio 0 identical, mask equivalence within
1e-4, and params/MACs that fall as the plan says."""

from __future__ import annotations

import importlib.util

import pytest

import onnxprune
from models import zoo

from .oracle import assert_oracle

# Models whose every channel is coupled to something the tool must leave alone.
NOT_EXPECTED_TO_SHRINK: set[str] = set()


def _available(entry) -> bool:
    need = {"torchvision": "torchvision", "nudenet": "nudenet", "onnx-light": "onnx"}[entry["source"]]
    return importlib.util.find_spec(need) is not None


@pytest.mark.zoo
@pytest.mark.parametrize("name,exporter", zoo.cases(), ids=[f"{n}-{x}" for n, x in zoo.cases()])
def test_zoo_model_prunes_correctly(name, exporter):
    entry = zoo.entry(name)
    if not _available(entry):
        pytest.skip(f"{entry['source']} is not installed")
    path = zoo.ensure(name, exporter)
    shapes = {i["name"]: tuple(i["test_shape"]) for i in entry["inputs"]}
    stats = assert_oracle(str(path), ratio=0.5, shapes=shapes, round_to=8,
                          expect_pruned=name not in NOT_EXPECTED_TO_SHRINK)
    _, report = onnxprune.prune(str(path), ratio=0.5, input_shapes=shapes, verify=False)
    planned, measured = report["macs"]["planned_after"], report["macs"]["after"]
    if measured is not None:
        assert planned == measured, "MACs differ from what the plan says"
        assert measured == stats["macs"][1]
    params = report["params"]
    assert abs(params["after"] - params["planned_after"]) <= 0.01 * params["before"]
