"""The zoo manifest is well-formed (fast: exports nothing, imports no torch)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

from models import zoo  # noqa: E402


def test_names_unique_and_cases_cover_all_exporters():
    names = [e["name"] for e in zoo.ENTRIES]
    assert len(names) == len(set(names))
    assert len(zoo.cases()) == sum(len(e["exporters"]) for e in zoo.ENTRIES)
    assert zoo.entry(names[0]) is zoo.ENTRIES[0]
    with pytest.raises(KeyError):
        zoo.entry("no-such-model")


@pytest.mark.parametrize("e", zoo.ENTRIES, ids=lambda e: e["name"])
def test_entry_well_formed(e):
    assert e["source"] in zoo.SOURCES
    assert e["exporters"] and set(e["exporters"]) <= set(zoo.EXPORTERS[e["source"]])
    if e["exporters"] == ["file"]:
        assert e["file"].endswith(".onnx")
    assert e["inputs"]
    for inp in e["inputs"]:
        assert inp["name"]
        shape, test_shape = inp["shape"], inp["test_shape"]
        assert len(shape) == len(test_shape) >= 1
        for dim, t in zip(shape, test_shape):
            assert type(t) is int and t > 0
            assert (type(dim) is int and dim == t) or (isinstance(dim, str) and dim)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXPRUNE_ZOO_CACHE", str(tmp_path))
    assert zoo.cache_dir() == tmp_path
    assert zoo.model_path("resnet18", "dynamo").parent == tmp_path
    monkeypatch.delenv("ONNXPRUNE_ZOO_CACHE")
    assert zoo.cache_dir() == Path.home() / ".cache" / "onnxprune" / "zoo"


def test_import_does_not_import_torch():
    code = "import sys, models.zoo; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
