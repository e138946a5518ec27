"""A model over 2 GB: ``onnxprune prune`` on it, its wall time and its peak memory against
the model's size (RESULTS.md).

Builds (once, into ``--dir``) a synthetic MLP whose weights pass 2 GB: ``--layers`` Gemm
layers of ``--width``×``--width`` float32 with ReLU between them, the weights in one external
data file beside the model. Then runs ``onnxprune prune`` on it in a child process, as a user
would, and reports its exit code, wall time and peak resident memory (``ru_maxrss`` of the
child: memory-mapped weight pages count too) against the size of the model. The written
model is then checked from its file (full checker, one ONNX Runtime run). Run from the
repository root::

    python -m benchmarks.big_model [--dir /tmp/onnxprune-big] [--width 14336] [--layers 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.common import machine


def build(folder: Path, width: int, layers: int) -> Path:
    """The model file (weights in ``model.onnx.data``), made once."""
    path = folder / "model.onnx"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for k in range(layers):
        w = (rng.standard_normal((width, width), dtype=np.float32)
             / np.float32(np.sqrt(width)))
        inits += [numpy_helper.from_array(w, f"w{k}"),
                  numpy_helper.from_array(np.zeros(width, np.float32), f"b{k}")]
        nodes.append(helper.make_node("Gemm", [x, f"w{k}", f"b{k}"], [f"g{k}"], name=f"fc{k}"))
        x = f"g{k}"
        if k < layers - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{k}"], name=f"relu{k}"))
            x = f"r{k}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", width])], [helper.make_tensor_value_info(
            x, TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/onnxprune-big")
    parser.add_argument("--width", type=int, default=14336)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    path = build(folder, args.width, args.layers)
    size = path.stat().st_size + (folder / "model.onnx.data").stat().st_size
    out = folder / "pruned.onnx"
    print(machine())
    print(f"Command: `python -m benchmarks.big_model --width {args.width} --layers "
          f"{args.layers} --ratio {args.ratio:g}`")
    print(f"model: {args.layers} Gemm layers {args.width}×{args.width}, {size / 2**30:.2f} GiB "
          f"with its external data")
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(path), "-o",
                            str(out), "--ratio", str(args.ratio)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(f"exit {child.returncode}; {wall:.0f} s; peak resident memory {peak / 2**30:.2f} GiB "
          f"= {peak / size:.2f}× the model")
    print((child.stdout + child.stderr).strip().splitlines()[-1] if child.stdout + child.stderr
          else "(no output)")
    if child.returncode == 0:
        written = sum(p.stat().st_size for p in folder.glob("pruned.onnx*"))
        print(f"written: {written / 2**30:.2f} GiB ({', '.join(sorted(p.name for p in folder.glob('pruned.onnx*')))})")
        print(f"written model: {check_written(out, args.width)}")
        for p in folder.glob("pruned.onnx*"):
            os.unlink(p)


def check_written(path: Path, width: int) -> str:
    """The full checker on the written file, and one ONNX Runtime run of it."""
    import onnxruntime as ort

    onnx.checker.check_model(str(path), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": np.ones((1, width), np.float32)})[0]
    return f"onnx.checker full check passed; ONNX Runtime runs it, output {list(out.shape)}"


if __name__ == "__main__":
    main()
