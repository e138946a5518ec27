"""The zoo at ratio 0.5: what each model's groups allow, the MACs/params kept, the oracle's
error, and which ops stayed barriers. Run from the repository root::

    python -m benchmarks.zoo_report
"""

from __future__ import annotations

from collections import Counter

import onnxprune
from benchmarks.common import machine
from models import zoo


def main() -> None:
    print(machine())
    print("| model | exporter | groups (prunable) | MACs kept | params kept | max rel err "
          "| barrier ops |")
    print("|---|---|---|---|---|---|---|")
    for name, exporter in zoo.cases():
        entry = zoo.entry(name)
        shapes = {i["name"]: tuple(i["test_shape"]) for i in entry["inputs"]}
        _, report = onnxprune.prune(str(zoo.ensure(name, exporter)), ratio=0.5,
                                    input_shapes=shapes)
        groups = report["groups"]
        macs, params = report["macs"], report["params"]
        kept = f"{macs['after'] / macs['before']:.1%}" if macs["before"] else "n/a"
        ops = Counter(b["op"] for b in report["barriers"])
        barriers = ", ".join(f"{op}×{n}" for op, n in sorted(ops.items())) or "none"
        print(f"| {name} | {exporter} | {len(groups)} ({sum(g['prunable'] for g in groups)}) | "
              f"{kept} | {params['after'] / params['before']:.1%} | "
              f"{report['check']['max_rel_error']:.1e} | {barriers} |")


if __name__ == "__main__":
    main()
