"""The inside of the tool may be rearranged, but what it writes may not change by accident:
pruned files for a fixed set of models and options are byte-identical to the recorded ones
(``python -m tests.golden --write`` records them; see ``tests/golden.py``)."""

from __future__ import annotations

import json

import pytest

from .golden import CASES, DIGESTS, model_path, prune_case

RECORDED = json.loads(DIGESTS.read_text())


@pytest.mark.parametrize("name, ref, options", CASES, ids=[c[0] for c in CASES])
def test_pruned_file_is_byte_identical(name, ref, options):
    if ref.endswith(".torchscript"):
        pytest.importorskip("torch")
    model_path(ref)
    source, pruned = prune_case(ref, options)
    assert source == RECORDED[name]["input"], (
        f"the input model of {name} is not the one recorded: the zoo export changed; "
        f"re-record with python -m tests.golden --write at a commit known to be right")
    assert pruned == RECORDED[name]["pruned"], f"{name}: the pruned file changed"
