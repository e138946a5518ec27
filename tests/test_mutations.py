"""The suite can fail where it should: a plausible bug planted in a rule is caught.

Each test takes one line of a rule's source, changes it the way index code goes wrong (an
off-by-one offset, a column-major reshape, tile for repeat, a forgotten tie), runs the mutant
in the rule's place, and expects the oracle (``tests/oracle.py``) to reject the pruned model
by its mask equivalence. The mutants do not raise: the bug shows only in what the pruned model
computes. Each test first proves the unmutated rule passes on the same model.
"""

from __future__ import annotations

import inspect
import textwrap

import pytest

from onnxprune.rules import concat_split, conv, reshape

from .oracle import assert_oracle
from .test_patterns import (channel_shuffle, concat, depthwise_multiplier, flatten_gemm, grouped,
                            reshape_matmul_dynamic_batch)

SHAPES = {reshape_matmul_dynamic_batch: {"x": (1, 3, 8, 8)}}


def mutant(function, line: str, replacement: str):
    """``function`` recompiled in its module with the one occurrence of ``line`` replaced."""
    source = textwrap.dedent(inspect.getsource(function))
    assert source.count(line) == 1, f"{line!r} is not one line of {function.__qualname__}"
    space: dict = {}
    code = compile(source.replace(line, replacement), f"<mutant of {function.__qualname__}>",
                   "exec")
    exec(code, function.__globals__, space)  # noqa: S102 - our own source, one line changed
    return space[function.__name__]


def _check(make, monkeypatch, owner, name, line, replacement):
    assert_oracle(make(), ratio=0.5, round_to=1, shapes=SHAPES.get(make))
    monkeypatch.setattr(owner, name, mutant(getattr(owner, name), line, replacement))
    with pytest.raises(AssertionError, match="vs masked original"):
        assert_oracle(make(), ratio=0.5, round_to=1, shapes=SHAPES.get(make))


@pytest.mark.parametrize("make", [concat, channel_shuffle])
def test_concat_with_an_off_by_one_offset_is_caught(make, monkeypatch):
    _check(make, monkeypatch, concat_split.ConcatRule, "propagate",
           "np.concatenate(pieces, j)", "np.roll(np.concatenate(pieces, j), 1, axis=j)")


@pytest.mark.parametrize("make", [reshape_matmul_dynamic_batch, flatten_gemm])
def test_reshape_that_regroups_column_major_is_caught(make, monkeypatch):
    """Channels merged with spatial dims (flatten → linear) in Fortran order."""
    _check(make, monkeypatch, reshape, "_regroup",
           ".reshape(out_sizes)", '.reshape(out_sizes, order="F")')


def test_depthwise_outputs_read_from_the_wrong_input_are_caught(monkeypatch):
    """Output c·m + j of a depthwise conv with multiplier m taken to read input
    (c·m + j) mod C instead of c."""
    _check(depthwise_multiplier, monkeypatch, conv.ConvRule, "propagate",
           "np.repeat(x.labels, m)", "np.tile(x.labels, m)")


def test_grouped_conv_whose_groups_lose_different_outputs_is_caught(monkeypatch):
    """A grouped conv that forgets that every group must lose the same output positions."""
    _check(grouped, monkeypatch, conv.ConvRule, "propagate",
           "ctx.space.unify_along(grid_out, 0)", "pass")


def test_a_failed_check_names_the_output_and_where_it_starts(monkeypatch):
    """A prune that fails its check says which output failed by how much, and the first
    tensor where the pruned model leaves the masked original (here, the planted Concat)."""
    import onnxprune
    from onnxprune.errors import VerificationError

    monkeypatch.setattr(concat_split.ConcatRule, "propagate", mutant(
        concat_split.ConcatRule.propagate, "np.concatenate(pieces, j)",
        "np.roll(np.concatenate(pieces, j), 1, axis=j)"))
    model = concat()
    with pytest.raises(VerificationError) as failed:
        onnxprune.prune(model, ratio=0.5, round_to=1)
    message = str(failed.value)
    concat_node = next(n.name for n in model.graph.node if n.op_type == "Concat")
    assert f"worst output {model.graph.output[0].name!r}" in message
    assert f"it starts at {concat_node}," in message and "\n" not in message
