"""Soak test of the core oracle on thousands of random graphs (``tests.random_graphs``).

Each seed builds one random DAG (convs of any group count, residual adds, concats, splits,
squeeze-excitation, channel-last linears between transposes, flatten into Gemm) and prunes it
at a ratio and ``round_to`` that cycle with the seed; the oracle of ``tests.oracle`` must hold
(full checker, ONNX Runtime run, same IO, ratio 0 bit-identical, equal to the masked
original). Prints how many were tried, how many failed (with their seeds, to replay), and how
many lost parameters. Run from the repository root::

    python -m benchmarks.soak [--seeds 3000] [--start 0] [--max-steps 12] [--external]

``--external`` saves each graph with every tensor in an external data file and prunes it from
there, so the weights stay in files (``onnxprune.io.weights``).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from benchmarks.common import machine
from onnxprune.io import release_weights
from tests.oracle import assert_oracle, external
from tests.random_graphs import random_graph

SETTINGS = [(0.25, 1), (0.5, 1), (0.5, 4), (0.75, 2), (0.9, 1)]   # (ratio, round_to)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--external", action="store_true")
    args = parser.parse_args(argv)
    print(machine())
    print(f"Command: `python -m benchmarks.soak --seeds {args.seeds} --start {args.start} "
          f"--max-steps {args.max_steps}{' --external' if args.external else ''}`")
    failed, pruned, nodes = [], 0, 0
    start = time.perf_counter()
    for seed in range(args.start, args.start + args.seeds):
        ratio, round_to = SETTINGS[seed % len(SETTINGS)]
        model = random_graph(random.Random(seed).choice, args.max_steps)
        nodes += len(model.graph.node)
        try:
            with tempfile.TemporaryDirectory() as folder:
                model = external(model, folder) if args.external else model
                try:
                    numbers = assert_oracle(model, ratio=ratio, round_to=round_to,
                                            expect_pruned=False, shapes={"x": (2, 3, 6, 6)})
                finally:
                    release_weights(model)
        except Exception as exc:  # noqa: BLE001 - every failure is counted and replayable
            failed.append((seed, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"))
            continue
        pruned += numbers["params"][1] < numbers["params"][0]
    elapsed = time.perf_counter() - start
    print(f"tried {args.seeds} random graphs ({nodes / args.seeds:.1f} nodes on average; "
          f"ratio/round_to cycling over {SETTINGS}): {len(failed)} failed, "
          f"{pruned} lost parameters, {elapsed:.0f} s")
    for seed, message in failed:
        print(f"- seed {seed}: {message}")


if __name__ == "__main__":
    main()
