"""Quantized deployment formats pruned by onnxprune and by onnxsim 0.8.1, on the same files.

The bundled digits CNN (trained; test split of scikit-learn's digits, 540 images) is
quantized by ONNX Runtime's own quantizer into the formats people deploy:

- ``qoperator``: ``quantize_static(quant_format=QOperator, per_channel=True)`` calibrated on
  64 training images (QLinearConv, QGemm, QLinearAdd, QLinearMul, QLinearConcat, ...);
- ``dynamic``: ``quantize_dynamic`` (DynamicQuantizeLinear, ConvInteger, MatMulInteger),
  per-tensor weights; ``dynamic_pc``: the same with per-channel weights.

Each file is pruned at each ``--ratios`` by

- onnxprune, data-free: ``onnxprune.prune(model, ratio=R, round_to=1)`` with its defaults
  (group L2 magnitude on the dequantized weights, uniform; round_to 1 because the layers are
  narrow), which checks the result against the masked original;
- onnxprune, OBS: the same with ``strategy=Strategy("obs")`` and 256 unlabeled training
  images as calibration: OBS scores, and the layers that read removed channels are re-fitted
  as floats and quantized back with their own scales;
- onnxsim: ``apply_structured_pruning_qoperator(model, sparsity=R)`` for QOperator, and
  ``apply_structured_pruning_dynamic_quantize_conv`` then ``..._dynamic_quantize_matmul``
  (sparsity R each) for the dynamic files, where the installed onnxsim has them.

Every result: valid (``onnx.checker`` full check, one ONNX Runtime run, the output shape of
the dense model), params (integer weights count, see ``count_params``), and top-1 accuracy on
the test split. The float model pruned by onnxprune at the same ratio is the reference. Run
from the repository root::

    python -m benchmarks.quantized_formats [--ratios 0.2 0.3 0.5]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import tempfile
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnxruntime import quantization

import onnxprune
from benchmarks.common import machine
from models.digits_cnn import accuracy, load_split
from onnxprune.pipeline import Strategy
from onnxprune.runtime import count_params, session

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))


class _Images(quantization.CalibrationDataReader):
    def __init__(self, images: np.ndarray):
        self.batches = iter([{"input": images[i:i + 8]} for i in range(0, len(images), 8)])

    def get_next(self):
        return next(self.batches, None)


def formats(folder: Path, x_train: np.ndarray) -> dict[str, onnx.ModelProto]:
    pre = folder / "pre.onnx"
    quantization.shape_inference.quant_pre_process(DEMO, str(pre))
    made = {"float": pre}
    made["qoperator"] = folder / "qoperator.onnx"
    quantization.quantize_static(
        str(pre), str(made["qoperator"]), _Images(x_train[:64]),
        quant_format=quantization.QuantFormat.QOperator, per_channel=True,
        weight_type=quantization.QuantType.QInt8, activation_type=quantization.QuantType.QUInt8)
    for name, per_channel in (("dynamic", False), ("dynamic_pc", True)):
        made[name] = folder / f"{name}.onnx"
        quantization.quantize_dynamic(str(pre), str(made[name]), per_channel=per_channel,
                                      weight_type=quantization.QuantType.QInt8)
    return {name: onnx.load(str(path)) for name, path in made.items()}


def valid(model: onnx.ModelProto, dense_shape) -> str:
    """"yes", or why not."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001 - reported
        return f"checker: {str(exc).splitlines()[0][:60]}"
    try:
        out = session(model).run(None, {"input": np.zeros((2, 1, 8, 8), np.float32)})[0]
    except Exception as exc:  # noqa: BLE001
        return f"ORT: {str(exc).splitlines()[0][:60]}"
    return "yes" if out.shape == dense_shape else f"output {out.shape}"


def onnxsim_prune(name: str, model: onnx.ModelProto, ratio: float):
    """onnxsim's pruning for this format, or a reason it cannot run."""
    try:
        import onnxsim
    except ImportError:
        return "onnxsim not installed"
    steps = {"qoperator": ["apply_structured_pruning_qoperator"],
             "dynamic": ["apply_structured_pruning_dynamic_quantize_conv",
                         "apply_structured_pruning_dynamic_quantize_matmul"],
             "float": ["apply_structured_pruning"]}[name.replace("_pc", "")]
    for step in steps:
        fn = getattr(onnxsim, step, None)
        if fn is None:
            return f"onnxsim {importlib.metadata.version('onnxsim')} has no {step}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = fn(model, sparsity=ratio)
        except Exception as exc:  # noqa: BLE001 - reported
            return f"{step} raised {type(exc).__name__}: {str(exc)[:60]}"
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.3, 0.5])
    args = parser.parse_args(argv)
    print(machine())
    try:
        sim = f"onnxsim {importlib.metadata.version('onnxsim')}"
    except importlib.metadata.PackageNotFoundError:
        sim = "onnxsim (not installed)"
    print(f"Command: `python -m benchmarks.quantized_formats --ratios "
          f"{' '.join(f'{r:g}' for r in args.ratios)}`; {sim}")
    x_train, _, x_test, y_test = load_split()
    with tempfile.TemporaryDirectory() as tmp:
        models = formats(Path(tmp), x_train)
    dense_shape = (2, 10)
    print("| format | ratio | tool | valid | params | top-1 | what it pruned |")
    print("|---|---|---|---|---|---|---|")
    for name, model in models.items():
        ops = sorted({n.op_type for n in model.graph.node
                      if "Integer" in n.op_type or n.op_type.startswith("Q")})
        print(f"| {name} | 0 | dense | {valid(model, dense_shape)} | {count_params(model)} | "
              f"{accuracy(model, x_test, y_test):.3f} | {', '.join(ops) or 'float'} |")
        for ratio in args.ratios:
            for tool, options in (("onnxprune", {}), ("onnxprune obs", dict(
                    strategy=Strategy("obs"), calib=[{"input": x_train[i:i + 32]}
                                                     for i in range(0, 256, 32)]))):
                pruned, report = onnxprune.prune(model, ratio=ratio, round_to=1,
                                                 input_shapes={"input": (2, 1, 8, 8)}, **options)
                groups = [g for g in report["groups"] if g["removed"]]
                what = (f"{sum(len(g['removed']) for g in groups)} channels in {len(groups)} "
                        f"groups; check error {report['check']['max_rel_error']:.1e}")
                print(f"| {name} | {ratio:g} | {tool} | {valid(pruned, dense_shape)} | "
                      f"{count_params(pruned)} | {accuracy(pruned, x_test, y_test):.3f} | "
                      f"{what} |")
            theirs = onnxsim_prune(name, model, ratio)
            if isinstance(theirs, str):
                print(f"| {name} | {ratio:g} | onnxsim | — | — | — | {theirs} |")
                continue
            ok = valid(theirs, dense_shape)
            top1 = f"{accuracy(theirs, x_test, y_test):.3f}" if ok == "yes" else "—"
            print(f"| {name} | {ratio:g} | onnxsim | {ok} | {count_params(theirs)} | {top1} | "
                  f"{_changed(model, theirs)} |")


def _changed(before: onnx.ModelProto, after: onnx.ModelProto) -> str:
    """Which weights onnxsim narrowed (count of initializers whose shape changed)."""
    old = {t.name: tuple(t.dims) for t in before.graph.initializer}
    new = {t.name: tuple(t.dims) for t in after.graph.initializer}
    changed = [n for n in new if n in old and new[n] != old[n] and len(new[n]) >= 2]
    return f"{len(changed)} weights narrowed"


if __name__ == "__main__":
    main()
