"""Depth against width on MiniLM-L6 with its real weights: sentence-embedding cosine to the
unpruned model after removing N residual blocks (``--blocks N``: those that change the
residual stream least on 16 calibration sentences), against width pruning (heads and MLP
neurons, OBS with the same sentences) at the same params (``target_params``), and against
removing the N blocks that change it most (a sanity check of the score). The same model
after ONNX Runtime's transformer optimizer (residual Add + LayerNorm fused into
SkipLayerNormalization) is pruned the same way, and onnxsim 0.8.1's
``apply_transformer_block_pruning(num_blocks_to_drop=N)`` runs on both forms with the same
calibration sentences (when onnxsim is installed).

The candidates are MiniLM's residual Adds whose branch nothing else reads. Run from the
repository root::

    python -m benchmarks.depth_quality [--blocks 1 2 4]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

import onnxprune
from benchmarks.common import machine
from benchmarks.minilm_fidelity import embed, sentence_inputs
from models import zoo
from onnxprune.graph import ModelGraph
from onnxprune.graph.residual import residual_blocks
from onnxprune.importance.depth import block_influence
from onnxprune.io import load_model
from onnxprune.rewrite.depth import drop_blocks
from onnxprune.runtime import count_params


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args(argv)
    ids, mask, calib = sentence_inputs()
    shapes = {"input_ids": ids.shape, "attention_mask": mask.shape}
    path = str(zoo.ensure("minilm_l6", "torchscript"))
    model = load_model(path)
    dense, dense_params = embed(path, ids, mask), count_params(model)
    fused = fused_form(path)
    graph = ModelGraph(model)
    blocks = residual_blocks(graph)
    influence = block_influence(model, blocks, calib, graph)
    print(machine())
    print(f"Command: `python -m benchmarks.depth_quality --blocks "
          f"{' '.join(map(str, args.blocks))}`; {len(blocks)} candidate blocks")
    print("| blocks removed | how | params kept | mean cosine | min cosine |")
    print("|---|---|---|---|---|")

    def row(n, how, pruned):
        cos = (embed(pruned, ids, mask) * dense).sum(1)
        print(f"| {n} | {how} | {count_params(pruned) / dense_params:.1%} | "
              f"{cos.mean():.4f} | {cos.min():.4f} |", flush=True)
        return count_params(pruned) / dense_params

    for n in args.blocks:
        pruned, report = onnxprune.prune(path, blocks=n, calib=calib, input_shapes=shapes)
        kept = row(n, "depth: least influence (`--blocks`)", pruned)
        worst = [blocks[i] for i in sorted(np.argsort(influence)[::-1][:n])]
        row(n, "depth: most influence", drop_blocks(model, worst))
        width, _ = onnxprune.prune(path, target_params=kept, round_to=1, calib=calib,
                                   strategy=onnxprune.Strategy("obs"), input_shapes=shapes)
        row("-", "width at the same params (heads + MLP, OBS)", width)
        pruned, _ = onnxprune.prune(fused, blocks=n, calib=calib, input_shapes=shapes)
        row(n, "depth on the ORT-fused model (SkipLayerNormalization)", pruned)
        for form, source in (("plain", model), ("ORT-fused", fused)):
            theirs = onnxsim_blocks(source, n, calib)
            if isinstance(theirs, str):
                print(f"| {n} | onnxsim block pruning, {form} | - | {theirs} | - |")
            else:
                row(n, f"onnxsim block pruning, {form}", theirs)


def fused_form(path: str):
    """MiniLM through ``onnxruntime.transformers.optimizer`` (model type bert)."""
    from onnxruntime.transformers.optimizer import optimize_model

    return optimize_model(path, model_type="bert", num_heads=12, hidden_size=384,
                          opt_level=1, use_gpu=False).model


def onnxsim_blocks(model, n: int, calib):
    """onnxsim's depth pruning, or why it gave nothing."""
    try:
        import onnxsim
    except ImportError:
        return "onnxsim not installed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = onnxsim.apply_transformer_block_pruning(model, calibration_data=list(calib),
                                                          num_blocks_to_drop=n)
    except Exception as exc:  # noqa: BLE001 - reported
        return f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
    if count_params(out) == count_params(model):
        return "removed nothing"
    return out


if __name__ == "__main__":
    main()
