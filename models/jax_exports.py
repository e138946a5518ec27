"""Small pure-JAX models exported to ONNX as a JAX user deploys them, JAX → jax2tf → tf2onnx:
the fixtures ``tests/fixtures/jax2tf_*.onnx``. tf2onnx cannot convert jax2tf's default native
serialization (one ``XlaCallModule`` op holding StableHLO), nor the ``Xla*`` ops
(``XlaDotV2``, ``XlaConv``) of the non-native path with XLA on; it needs the non-native path
with ``enable_xla=False``, which lowers to plain TensorFlow ops (``Einsum``, ``Conv2D``, …).
That path was removed after jax 0.7.1, so pin it. TensorFlow does not install beside the dev
extras (its own numpy and protobuf pins), so run this once in an environment of its own::

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf2onnx "jax==0.7.1"
    /tmp/tfenv/bin/python models/jax_exports.py tests/fixtures

(made with TensorFlow 2.21, tf2onnx 1.17, jax/jaxlib 0.7.1). With ``onnxruntime`` in that
environment too, it also prints how far the ONNX model's outputs are from JAX's.

``with_gradient=True`` (jax2tf's default) is kept on purpose: ``with_gradient=False`` puts a
``PreventGradient`` op on the output, which tf2onnx does not convert; the custom gradient of
the default is an ``IdentityN`` that vanishes in the ONNX graph. The batch is dynamic
(``polymorphic_shapes=["(b, ...)"]``). Weights are random (seeded): the tests check structure
and the oracle, not a task.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np


def _init(rng: np.random.RandomState, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Random float32 weights, scaled by fan-in; biases and LayerNorm shifts small, scales near 1."""
    params = {}
    for name, shape in shapes.items():
        if name.startswith("g"):                      # LayerNorm scale
            params[name] = (1.0 + 0.1 * rng.randn(*shape)).astype(np.float32)
        elif len(shape) == 1:                         # bias or LayerNorm shift
            params[name] = (0.1 * rng.randn(*shape)).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[:-1]))
            params[name] = (rng.randn(*shape) / np.sqrt(fan_in)).astype(np.float32)
    return params


def jax_mlp_cnn(rng):
    """NHWC convs (lax.conv_general_dilated) with bias and ReLU, a residual block whose inner
    conv is free to prune, global mean pooling, then a Dense MLP (jnp.dot) with a hidden layer.
    Input (batch, 16, 16, 3), output (batch, 10)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    params = _init(rng, {"w1": (3, 3, 3, 16), "b1": (16,), "w2": (3, 3, 16, 16), "b2": (16,),
                         "w3": (3, 3, 16, 16), "b3": (16,), "d1": (16, 24), "c1": (24,),
                         "d2": (24, 10), "c2": (10,)})

    def conv(x, w, b):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

    def fn(p, x):
        x = jax.nn.relu(conv(x, p["w1"], p["b1"]))
        h = jax.nn.relu(conv(x, p["w2"], p["b2"]))
        x = jax.nn.relu(x + conv(h, p["w3"], p["b3"]))          # residual
        x = jnp.mean(x, axis=(1, 2))                              # global mean pool
        x = jax.nn.relu(jnp.dot(x, p["d1"]) + p["c1"])
        return jnp.dot(x, p["d2"]) + p["c2"]

    return fn, params, (16, 16, 3), "image"


def jax_transformer(rng):
    """Tokens → Dense to 32 → one pre-LN encoder block written by hand: LayerNorm (mean, var,
    rsqrt, γ, β), 4-head self-attention of head size 8 in jnp.einsum, residual, LayerNorm, a
    GELU MLP 32→64→32, residual; then the mean over tokens and a Dense to 5.
    Input (batch, 8, 12), output (batch, 5)."""
    import jax
    import jax.numpy as jnp

    params = _init(rng, {"we": (12, 32), "be": (32,),
                         "g1": (32,), "b1": (32,),
                         "wq": (32, 4, 8), "wk": (32, 4, 8), "wv": (32, 4, 8), "wo": (4, 8, 32),
                         "g2": (32,), "b2": (32,),
                         "w1": (32, 64), "c1": (64,), "w2": (64, 32), "c2": (32,),
                         "wh": (32, 5), "ch": (5,)})

    def layer_norm(x, g, b, eps=1e-6):
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + eps) * g + b

    def attention(p, h):
        q = jnp.einsum("btm,mhd->bthd", h, p["wq"])     # m: model width, h: head, d: head dim
        k = jnp.einsum("btm,mhd->bthd", h, p["wk"])
        v = jnp.einsum("btm,mhd->bthd", h, p["wv"])
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8.0).astype(np.float32)
        weights = jax.nn.softmax(scores, axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return jnp.einsum("bqhd,hdo->bqo", o, p["wo"])

    def fn(p, x):
        x = jnp.dot(x, p["we"]) + p["be"]
        x = x + attention(p, layer_norm(x, p["g1"], p["b1"]))
        h = layer_norm(x, p["g2"], p["b2"])
        h = jax.nn.gelu(jnp.einsum("btd,df->btf", h, p["w1"]) + p["c1"], approximate=True)
        x = x + jnp.dot(h, p["w2"]) + p["c2"]
        return jnp.dot(jnp.mean(x, axis=1), p["wh"]) + p["ch"]

    return fn, params, (8, 12), "tokens"


def export(make, path: Path, seed: int) -> None:
    import jax
    import tensorflow as tf
    import tf2onnx
    from jax.experimental import jax2tf

    fn, params, shape, input_name = make(np.random.RandomState(seed))
    params = jax.tree_util.tree_map(np.asarray, params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # enable_xla=False is deprecated
        tf_fn = jax2tf.convert(lambda x: fn(params, x), polymorphic_shapes=["(b, ...)"],
                               with_gradient=True, enable_xla=False)
    spec = [tf.TensorSpec((None,) + shape, tf.float32, name=input_name)]
    tf_fn = tf.function(tf_fn, input_signature=spec, autograph=False)
    tf2onnx.convert.from_function(tf_fn, input_signature=spec, opset=17, output_path=str(path))

    x = np.random.RandomState(seed + 100).randn(3, *shape).astype(np.float32)
    want = np.asarray(jax.jit(fn)(params, x))
    print("wrote", path, f"({path.stat().st_size} bytes);",
          "max |tf - jax| =", float(np.abs(tf_fn(x).numpy() - want).max()))
    try:
        import onnxruntime as ort
    except ImportError:
        return
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    print("   max |onnx - jax| =", float(np.abs(got - want).max()))


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, make, seed in (("cnn", jax_mlp_cnn, 0), ("transformer", jax_transformer, 1)):
        export(make, out / f"jax2tf_{name}.onnx", seed)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
