"""Transformers pruned at 50% of the MLP neurons and 25% of the attention heads: ORT CPU latency
of the dense and pruned models against their MAC reduction, at several sequence lengths.

The models are the zoo's TorchScript exports (dynamic batch and sequence axes), random weights.
Only head and MLP groups are pruned (``ratio=0`` for every other group), at the default
``round_to``, and the result is verified against the masked original. Heads and neurons are
counted against the model's own config, so heads the pruner cannot take yet show as all kept.
Run from the repository root::

    python -m benchmarks.bench_transformers [--threads N] [--seq 32 128 512] [--runs R]
        [--warmup W] [--models bert_base llama_gqa] [--hidden R]

``--hidden R`` also removes that fraction of the hidden size where it is prunable (Llama; BERT
returns its hidden states, so its hidden size stays).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnx

import onnxprune
from benchmarks.common import machine, ort_latency
from models import zoo
from onnxprune.pipeline import DEFAULT_ROUND_TO
from onnxprune.runtime import count_cost
from onnxprune.runtime import run_model
from onnxprune.runtime.cost import node_macs

MODELS = ["bert_base", "llama_gqa"]
HEADS, MLP = 0.25, 0.5
VOCAB_LIMIT = 1000  # input ids are drawn from [0, 1000): inside every zoo model's vocabulary


def architecture(name: str) -> dict:
    """Layers, query/KV heads and MLP width, read from the config the zoo exported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    e = zoo.entry(name)
    config = getattr(transformers, e["config"])(**e.get("kwargs", {}))
    heads = config.num_attention_heads
    return {"layers": config.num_hidden_layers, "heads": heads,
            "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "mlp": config.intermediate_size}


def feeds_at(seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, VOCAB_LIMIT, (1, seq), dtype=np.int64),
            "attention_mask": np.ones((1, seq), dtype=np.int64)}


def macs_at(model: onnx.ModelProto, shapes: dict) -> tuple[int | None, bool]:
    """(MACs, measured?) at ``shapes``: ``count_cost``, or where it cannot size a MatMul of two
    activations (attention scores behind a symbolic reshape), those MatMuls sized by one ORT run
    with both their operands exposed as outputs; other nodes keep count_cost's figures."""
    macs = count_cost(model, shapes).macs
    if macs is not None:
        return macs, False
    per_node = node_macs(model, shapes)
    if per_node is None:
        return None, False
    unknown = [n for n, m in zip(model.graph.node, per_node) if m is None]
    if any(n.op_type != "MatMul" for n in unknown):
        return None, False
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    names = dict.fromkeys(t for n in unknown for t in (n.input[0], n.input[1], n.output[0]))
    for t in names:
        if t not in declared:
            probe.graph.output.append(onnx.ValueInfoProto(name=t))
    shape = {k: v.shape for k, v in run_model(probe, feeds_at(shapes["input_ids"][1])).items()}
    del probe
    extra = sum(int(np.prod(shape[n.output[0]], dtype=np.int64)) * int(shape[n.input[0]][-1])
                for n in unknown)
    return int(sum(m for m in per_node if m is not None)) + extra, True


def heads_cell(report: dict, arch: dict) -> str:
    """Query heads (and, with GQA, KV heads) kept, against the config's totals. A head group has
    one unit per query head, or one per KV head together with the query heads that share it."""
    layers, q, kv = arch["layers"], arch["heads"], arch["kv_heads"]
    gqa = kv != q
    groups = [g for g in report["groups"] if g["kind"] == "heads" and g["prunable"]]
    if not groups:
        return (f"{layers * q}/{layers * q}" + (f"; KV {layers * kv}/{layers * kv}" if gqa else "")
                + " (no prunable head groups)")
    q_removed = kv_removed = 0
    for g in groups:
        removed = g["units"] - len(g["kept"])
        if g["units"] == q:  # a unit per query head (MHA: also its key/value head)
            q_removed += removed
            kv_removed += 0 if gqa else removed
        elif g["units"] == kv:  # a unit per KV head and the q // kv query heads sharing it
            q_removed += removed * (q // kv)
            kv_removed += removed
        else:  # an unexpected split: report the groups' own units
            units = sum(g["units"] for g in groups)
            kept = sum(len(g["kept"]) for g in groups)
            return f"{kept}/{units} head-group units (config: {layers}×{q} heads, {kv} KV)"
    cell = f"{layers * q - q_removed}/{layers * q}"
    if gqa:
        cell += f"; KV {layers * kv - kv_removed}/{layers * kv}"
    notes = []
    if len(groups) != layers:
        notes.append(f"head groups in {len(groups)} of {layers} layers")
    if q_removed == 0:
        sizes = sorted({g["units"] for g in groups})
        notes.append(f"{HEADS:.0%} of {'/'.join(map(str, sizes))} units per group removes none")
    return cell + (f" ({'; '.join(notes)})" if notes else "")


def mlp_cell(report: dict, arch: dict) -> str:
    """MLP neurons kept, against the config's totals (non-prunable groups remove nothing)."""
    total = arch["layers"] * arch["mlp"]
    groups = [g for g in report["groups"] if g["kind"] == "mlp" and g["prunable"]]
    removed = sum(g["units"] - len(g["kept"]) for g in groups)
    cell = f"{total - removed}/{total}"
    if not groups:
        return cell + " (no prunable MLP groups)"
    units = sum(g["units"] for g in groups)
    return cell if units == total else cell + f" ({units} in prunable MLP groups)"


def fmt_macs(n: int) -> str:
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.1f}M"


def fmt_ms(lat: dict) -> str:
    return f"{lat['median']:.2f} (p90 {lat['p90']:.2f})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--seq", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per ORT session")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per ORT session")
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--hidden", type=float, default=None,
                        help="also prune this fraction of the hidden size (opt-in kind)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)

    print(machine())
    print(f"Command: `python -m benchmarks.bench_transformers {' '.join(argv)}`".rstrip())
    print(f"ORT CPU EP, ORT_ENABLE_ALL, {args.threads} intra-op thread(s); batch 1, input_ids "
          f"random in [0, {VOCAB_LIMIT}), attention_mask ones; {args.warmup} warm-up + "
          f"{args.runs} timed runs per session; pruning: heads {HEADS}, MLP {MLP}, hidden "
          f"{args.hidden or 0}, other groups "
          f"0, round_to {DEFAULT_ROUND_TO} (default), verified.")
    print(flush=True)

    structure, rows, notes, failed = [], [], [], []
    for name in args.models:
        path = str(zoo.ensure(name, "torchscript"))
        arch = architecture(name)
        check_shape = (1, min(args.seq))
        try:
            pruned, report = onnxprune.prune(
                path, ratio=0.0, heads=HEADS, mlp=MLP, hidden=args.hidden, verify=True,
                input_shapes={"input_ids": check_shape, "attention_mask": check_shape})
        except onnxprune.OnnxPruneError as exc:  # e.g. VerificationError: report, go on
            failed.append(f"{name}: pruning failed: {type(exc).__name__}: {exc}")
            print(failed[-1], flush=True)
            continue
        heads, mlp = heads_cell(report, arch), mlp_cell(report, arch)
        p = report["params"]
        structure.append(f"| {name} | {heads} | {mlp} | {p['before']:,} | {p['after']:,} | "
                         f"{p['after'] / p['before']:.1%} | "
                         f"{report['check']['max_rel_error']:.1e} |")
        print(f"{name}: params {p['before']:,} -> {p['after']:,}; heads kept {heads}; "
              f"MLP neurons kept {mlp}", flush=True)
        dense = onnx.load(path)
        pruned_bytes = pruned.SerializeToString()
        measured = False
        for seq in args.seq:
            shapes = {"input_ids": (1, seq), "attention_mask": (1, seq)}
            feeds = feeds_at(seq)
            d = ort_latency(path, feeds, args.threads, args.warmup, args.runs)
            q = ort_latency(pruned_bytes, feeds, args.threads, args.warmup, args.runs)
            macs_d, md = macs_at(dense, shapes)
            macs_p, mp = macs_at(pruned, shapes)
            measured |= md or mp
            speedup = d["median"] / q["median"]
            if macs_d and macs_p:
                reduction = macs_d / macs_p
                mac_cell = f"{reduction:.2f}× ({fmt_macs(macs_d)} / {fmt_macs(macs_p)})"
                eff = f"{speedup / reduction:.2f}"
            else:
                mac_cell, eff = "n/a", "n/a"
            row = (f"| {name} | {seq} | {fmt_ms(d)} | {fmt_ms(q)} | {speedup:.2f}× | "
                   f"{mac_cell} | {eff} |")
            rows.append(row)
            print(row, flush=True)
        if measured:
            notes.append(f"{name}: count_cost left some attention MatMuls unsized; those were "
                         "sized from one ORT run (see macs_at).")
        del dense, pruned, pruned_bytes

    print()
    print("| model | heads kept (query; KV) | MLP neurons kept | params dense | params pruned "
          "| params kept | max rel err |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(structure))
    print()
    print("| model | seq | dense ms (median, p90) | pruned ms (median, p90) | speedup "
          "| MAC reduction (dense/pruned) | speedup / MAC reduction |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for note in notes:
        print(f"\nNote: {note}")
    if failed:
        print("\n" + "\n".join(f"FAILED: {f}" for f in failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
