"""Property-based tests (issue 6): random DAGs from every op pattern the pruner couples (see
``random_graphs``), at random widths, ratios and ``round_to``; for each one the core oracle
holds: full checker, ONNX Runtime run, same inputs and outputs, ratio 0 bit-identical, and
equal to the masked original. A few hundred run here (derandomized, so CI is repeatable);
``python -m benchmarks.soak`` runs thousands."""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxprune.io import release_weights

from .oracle import assert_oracle, external
from .random_graphs import random_graph


PRUNED_AT_LEAST = 0.8   # share of the random graphs that must lose parameters (174 of 200)


def test_the_oracle_holds_on_random_graphs():
    """Every graph passes the oracle with no rule raising (the analysis is strict in tests),
    and most of them really lose parameters: a rule that quietly made everything a barrier
    would pass the oracle on an unpruned model, so pruning nothing must show."""
    lost = []

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def one_graph(data):
        model = random_graph(lambda options: data.draw(st.sampled_from(options)))
        ratio = data.draw(st.sampled_from([0.25, 0.5, 0.75, 0.9]), label="ratio")
        round_to = data.draw(st.sampled_from([1, 2, 4]), label="round_to")
        cost = assert_oracle(model, ratio=ratio, round_to=round_to, expect_pruned=False,
                             shapes={"x": (2, 3, 6, 6)})
        lost.append(cost["params"][1] < cost["params"][0])

    one_graph()
    assert len(lost) >= 150 and sum(lost) >= PRUNED_AT_LEAST * len(lost), (
        f"only {sum(lost)} of {len(lost)} random graphs lost parameters")


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_the_oracle_holds_with_the_weights_in_files(data):
    """The same, every tensor in an external data file: memory-mapped reads, sliced and
    masked weights written to the store, checks run from files (``io.weights``)."""
    model = random_graph(lambda options: data.draw(st.sampled_from(options)))
    ratio = data.draw(st.sampled_from([0.25, 0.5, 0.75, 0.9]), label="ratio")
    round_to = data.draw(st.sampled_from([1, 2, 4]), label="round_to")
    with tempfile.TemporaryDirectory() as folder:
        stored = external(model, folder)
        try:
            assert_oracle(stored, ratio=ratio, round_to=round_to, expect_pruned=False,
                          shapes={"x": (2, 3, 6, 6)})
        finally:
            release_weights(stored)
