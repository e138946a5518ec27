"""Tiny CNN on scikit-learn's ``load_digits`` (1,797 8x8 grey images, 10 classes).

Used as onnxprune's bundled demo model (``onnxprune/data/demo_digits.onnx``) and
by the tests to report accuracy before/after pruning.  The architecture is small
but deliberately exercises the coupled-channel patterns a structural pruner has
to handle:

* stem ``Conv(1->32, 3x3) + BN + ReLU``
* residual block: two 3x3 convs with BN, identity ``Add`` (channels coupled
  across the stem, both convs and the add)
* depthwise-separable block: depthwise 3x3 conv (``group == C``) + BN +
  HardSwish, pointwise 1x1 conv + BN + ReLU
* squeeze-excitation on the pointwise output:
  ``GlobalAveragePool -> 1x1 conv -> ReLU -> 1x1 conv -> Sigmoid -> Mul``
* two-branch block (1x1 and 3x3 conv, each + BN + ReLU) joined by ``Concat``
  on channels
* ``MaxPool 2x2`` (8x8 -> 4x4), then ``Flatten`` of the ``[N, C, 4, 4]`` map
  (no global pooling: each channel owns a block of 16 features of the first
  ``Gemm``) -> ``Linear -> ReLU -> Linear(10)``.

``torch`` is only imported inside the functions that need it, so
``load_split()`` and ``accuracy()`` work with numpy / scikit-learn /
onnxruntime alone.

Command line: ``python -m models.digits_cnn OUT.onnx`` trains, exports and
prints the test accuracy.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

DEFAULT_EPOCHS = 30
NUM_CLASSES = 10


# --------------------------------------------------------------------------- data
def load_split(seed: int = 0):
    """Return ``(x_train, y_train, x_test, y_test)``.

    Images are float32 NCHW ``[N, 1, 8, 8]`` scaled to ``[0, 1]`` (digits pixel
    values are 0..16); labels are int64.  The split is a fixed stratified 70/30
    split (``train_test_split(test_size=0.3, random_state=seed)``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=seed, stratify=y
    )
    return (
        np.ascontiguousarray(x_train, dtype=np.float32),
        np.ascontiguousarray(y_train, dtype=np.int64),
        np.ascontiguousarray(x_test, dtype=np.float32),
        np.ascontiguousarray(y_test, dtype=np.int64),
    )


# -------------------------------------------------------------------------- model
def build_model():
    """Construct the (untrained) ``torch.nn.Module``."""
    import torch
    from torch import nn

    def conv_bn(cin, cout, k, groups=1):
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    class ResidualBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = conv_bn(c, c, 3)
            self.conv2 = conv_bn(c, c, 3)

        def forward(self, x):
            y = torch.relu(self.conv1(x))
            y = self.conv2(y)
            return torch.relu(y + x)

    class SqueezeExcite(nn.Module):
        def __init__(self, c, r):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(c, r, 1)
            self.fc2 = nn.Conv2d(r, c, 1)

        def forward(self, x):
            s = self.pool(x)
            s = torch.relu(self.fc1(s))
            s = torch.sigmoid(self.fc2(s))
            return x * s

    class DepthwiseSeparable(nn.Module):
        def __init__(self, cin, cout, se_ch):
            super().__init__()
            self.dw = conv_bn(cin, cin, 3, groups=cin)
            self.act = nn.Hardswish()
            self.pw = conv_bn(cin, cout, 1)
            self.se = SqueezeExcite(cout, se_ch)

        def forward(self, x):
            x = self.act(self.dw(x))
            x = torch.relu(self.pw(x))
            return self.se(x)

    class TwoBranch(nn.Module):
        def __init__(self, cin, ca, cb):
            super().__init__()
            self.a = conv_bn(cin, ca, 1)
            self.b = conv_bn(cin, cb, 3)

        def forward(self, x):
            return torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(1, 32, 3)
            self.res = ResidualBlock(32)
            self.dwsep = DepthwiseSeparable(32, 48, 12)
            self.branches = TwoBranch(48, 24, 24)
            self.pool = nn.MaxPool2d(2)  # 8x8 -> 4x4
            self.fc1 = nn.Linear(48 * 4 * 4, 64)
            self.fc2 = nn.Linear(64, NUM_CLASSES)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = self.res(x)
            x = self.dwsep(x)
            x = self.branches(x)
            x = self.pool(x)
            x = torch.flatten(x, 1)
            x = torch.relu(self.fc1(x))
            return self.fc2(x)

    return DigitsCNN()


def train(seed: int = 0, epochs: int = DEFAULT_EPOCHS, threads: int = 1, verbose: bool = False):
    """Train the CNN on the training split; returns the module in eval mode.

    Deterministic for a given ``(seed, epochs, threads)`` on a given torch
    build.  The thread count changes the float reduction order and hence the
    weights; one thread is the default because it is as fast as two for this
    tiny model and far less sensitive to a busy machine (OpenMP spin-waits).
    ``onnxprune/data/demo_digits.onnx`` was built with the defaults.
    """
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception:  # pragma: no cover - older/odd builds
        pass

    x_train, y_train, _, _ = load_split(seed)
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)

    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    batch = 64
    steps_per_epoch = (len(xt) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)

    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            xb, yb = xt[idx], yt[idx]
            # light augmentation: random +-1 pixel shift (zero padded)
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            if dx or dy:
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
                if dy > 0:
                    xb[:, :, :dy, :] = 0
                elif dy < 0:
                    xb[:, :, dy:, :] = 0
                if dx > 0:
                    xb[:, :, :, :dx] = 0
                elif dx < 0:
                    xb[:, :, :, dx:] = 0
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach().item() * len(idx)
        if verbose:
            print(f"epoch {epoch + 1:3d}/{epochs}  loss {total / len(xt):.4f}", file=sys.stderr)
    model.eval()
    return model


# ------------------------------------------------------------------------- export
def export(model, path, keep_bn: bool = False) -> None:
    """Export ``model`` (eval mode) to ONNX opset 17 with a dynamic batch axis.

    Uses the TorchScript exporter (``dynamo=False``).

    * ``keep_bn=False`` (default): ``training=TrainingMode.EVAL``.  The
      exporter's eval-mode peephole pass folds every ``BatchNorm2d`` that
      directly follows a ``Conv2d`` into the conv's weight/bias, so the graph
      has no ``BatchNormalization`` nodes (all BNs here follow a conv).
    * ``keep_bn=True``: ``training=TrainingMode.PRESERVE`` with the module in
      eval mode.  The peephole pass is skipped, and because the module is in
      eval mode the BNs are exported as *inference* ``BatchNormalization``
      (``training_mode=0``, one output, running mean/var as initializers).
      Caveat: parameters with identical values (e.g. untrained BN gammas) get
      deduplicated into ``Identity`` nodes; a trained model has none.
    """
    import warnings

    import torch

    model = model.eval()
    dummy = torch.zeros(1, 1, 8, 8, dtype=torch.float32)
    d = os.path.dirname(os.fspath(path))
    if d:
        os.makedirs(d, exist_ok=True)
    mode = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    with torch.no_grad(), warnings.catch_warnings():
        # legacy-exporter deprecation notice and the (spurious, model is in
        # eval mode) PRESERVE constant-folding advice
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            model,
            (dummy,),
            os.fspath(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=mode,
            do_constant_folding=True,
        )


# ----------------------------------------------------------------------- evaluate
def _session(model_path_or_proto: Any):
    import onnxruntime as ort

    if isinstance(model_path_or_proto, (str, os.PathLike)):
        src = os.fspath(model_path_or_proto)
    elif isinstance(model_path_or_proto, (bytes, bytearray)):
        src = bytes(model_path_or_proto)
    else:  # onnx.ModelProto
        src = model_path_or_proto.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def predict(model_path_or_proto: Any, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of an ONNX model (path, serialized bytes or ``onnx.ModelProto``)."""
    sess = _session(model_path_or_proto)
    in_name = sess.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    outs = [
        sess.run(None, {in_name: x[i : i + batch_size]})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs, axis=0)


def accuracy(model_path_or_proto: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX model on ``(x, y)`` with onnxruntime (CPU)."""
    logits = predict(model_path_or_proto, x)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(y)))


# -------------------------------------------------------------------------- build
def build(
    path, seed: int = 0, epochs: int = DEFAULT_EPOCHS, keep_bn: bool = False, verbose: bool = False
) -> float:
    """Train, export to ``path`` and return the ONNX model's test accuracy."""
    model = train(seed=seed, epochs=epochs, verbose=verbose)
    export(model, path, keep_bn=keep_bn)
    _, _, x_test, y_test = load_split(seed)
    return accuracy(path, x_test, y_test)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m models.digits_cnn", description=__doc__.split("\n")[0])
    p.add_argument("out", help="output .onnx path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument(
        "--keep-bn",
        action="store_true",
        help="keep BatchNormalization nodes (default: folded into Conv by the exporter)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    acc = build(
        args.out, seed=args.seed, epochs=args.epochs, keep_bn=args.keep_bn, verbose=args.verbose
    )
    dt = time.perf_counter() - t0
    size = os.path.getsize(args.out)
    print(f"test accuracy: {acc:.4f}  ({args.out}, {size} bytes, {dt:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
