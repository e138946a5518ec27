"""Small Keras models exported to ONNX by tf2onnx, as a TensorFlow user deploys them: the
fixtures of ``tests/test_tf_exports.py``. TensorFlow does not install beside the dev extras
(its own numpy and protobuf pins), so run this once in an environment of its own::

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf2onnx
    /tmp/tfenv/bin/python models/tf_exports.py tests/fixtures

Weights are random (seeded): the tests check structure and the oracle, not a task.
"""

from __future__ import annotations

import sys
from pathlib import Path


def keras_cnn(tf):
    """Conv/BN/ReLU stem, a residual block, a depthwise-separable block, pooling, two Dense."""
    keras = tf.keras
    x = inputs = keras.Input((16, 16, 3), batch_size=None, name="image")
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(16, 3, padding="same")(x)))
    h = keras.layers.ReLU()(keras.layers.Conv2D(16, 3, padding="same")(x))
    x = keras.layers.ReLU()(keras.layers.Add()([x, keras.layers.Conv2D(16, 3, padding="same")(h)]))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.ReLU()(keras.layers.Conv2D(32, 1)(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(10)(keras.layers.Dense(24, activation="relu")(x))
    return keras.Model(inputs, x)


def keras_transformer(tf):
    """One encoder block: LayerNormalization, MultiHeadAttention (einsum inside), a GELU MLP,
    residual Adds, over a Dense embedding of the features."""
    keras = tf.keras
    x = inputs = keras.Input((8, 12), batch_size=None, name="tokens")
    x = keras.layers.Dense(32)(x)
    h = keras.layers.LayerNormalization()(x)
    x = x + keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)(h, h)
    h = keras.layers.LayerNormalization()(x)
    gelu = keras.layers.Activation(lambda v: keras.activations.gelu(v, approximate=True))
    x = x + keras.layers.Dense(32)(gelu(keras.layers.Dense(64)(h)))
    x = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, x)


def main(folder: str) -> None:
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(0)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, make in (("keras_cnn", keras_cnn), ("keras_transformer", keras_transformer)):
        model = make(tf)
        spec = [tf.TensorSpec((None,) + tuple(model.input.shape[1:]), tf.float32,
                              name=model.input.name)]
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17,
                                   output_path=str(out / f"tf2onnx_{name}.onnx"))
        print("wrote", out / f"tf2onnx_{name}.onnx")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
