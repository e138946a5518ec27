"""Random CNN-like DAGs from the ops the pruner has rules for, for property tests.

``random_graph(choose)`` builds one model; ``choose(options)`` picks one of a list. The test
suite passes a hypothesis draw (so failures shrink to a small graph), the soak benchmark a
seeded ``random.Random`` (so thousands run without hypothesis' database). Every pattern the
channel analysis must couple correctly appears: convolutions of any group count (depthwise
included), transposed convolutions, residual adds, concatenations, equal and unequal splits,
channel slices, channel shuffles, squeeze-excitation, channel-last linears between
transposes, pooling, group and instance norms, per-channel constants, and flatten into Gemm.
Every tensor the steps leave unread goes into the head, so no branch is dead and every
channel reaches the output. Opset 21 (GroupNormalization's per-channel scale and bias).
"""

from __future__ import annotations

from collections.abc import Callable
from math import gcd

import numpy as np

from .builder import GraphBuilder

Choose = Callable[[list], object]
WIDTHS = [4, 6, 8, 12, 16]
SIDE = 6        # spatial size: big enough for 3x3 convs, small enough to run fast
CLASSES = 5
STEPS = ["conv", "conv", "conv", "add", "concat", "split", "se", "channel_linear", "bn_relu",
         "pool", "group_norm", "scale", "slice", "shuffle", "deconv"]


def random_graph(choose: Choose, max_steps: int = 8):
    """A model with input ``x`` [N, C, SIDE, SIDE] and output ``y`` [N, CLASSES]."""
    b = GraphBuilder(opset=21, seed=choose(list(range(1000))))
    width = choose(WIDTHS[:3])
    tensors = [(b.conv("x", 3, width, k=choose([1, 3])), width)]   # (name, channels)
    read: set[str] = set()
    for _ in range(choose(list(range(1, max_steps + 1)))):
        step = choose(STEPS)
        made = globals()[f"_{step}"](b, choose, tensors, read)
        tensors.extend(made)
    head = _head(b, choose, [t for t in tensors if t[0] not in read] or tensors[-1:])
    return b.model({"x": ["N", 3, SIDE, SIDE]}, [head], shapes={head: ["N", CLASSES]})


def _pick(choose: Choose, tensors, read, need=lambda c: True):
    options = [t for t in tensors if need(t[1])]
    if not options:
        return None
    name, channels = choose(options)
    read.add(name)
    return name, channels


def _conv(b, choose, tensors, read):
    name, cin = _pick(choose, tensors, read)
    cout = choose(WIDTHS + [cin])
    divisors = [g for g in range(1, gcd(cin, cout) + 1) if cin % g == 0 and cout % g == 0]
    group = choose(divisors)
    out = b.conv(name, cin, cout, k=choose([1, 3]), group=group, bias=choose([True, False]))
    if choose([True, False]):
        out = b.op("Relu", [out])
    return [(out, cout)]


def _bn_relu(b, choose, tensors, read):
    name, c = _pick(choose, tensors, read)
    return [(b.op(choose(["Relu", "Sigmoid"]), [b.bn(name, c)]), c)]


def _add(b, choose, tensors, read):
    first = _pick(choose, tensors, read)
    second = _pick(choose, tensors, read, lambda c: c == first[1])
    if second is None or second[0] == first[0]:    # nothing to add to: a projection instead
        second = (b.conv(first[0], first[1], first[1], k=1), first[1])
    return [(b.op("Add", [first[0], second[0]]), first[1])]


def _concat(b, choose, tensors, read):
    first, second = _pick(choose, tensors, read), _pick(choose, tensors, read)
    return [(b.op("Concat", [first[0], second[0]], axis=1), first[1] + second[1])]


def _split(b, choose, tensors, read):
    picked = _pick(choose, tensors, read, lambda c: c % 2 == 0)
    if picked is None:
        return []
    name, c = picked
    sizes = b.const([c // 2, c // 2] if choose([True, False]) else [c // 4 * 2 or 1,
                                                                      c - (c // 4 * 2 or 1)])
    halves = b.op("Split", [name, sizes], outputs=2, axis=1)
    split = [int(v) for v in _const_values(b, sizes)]
    return [(halves[0], split[0]), (halves[1], split[1])]


def _se(b, choose, tensors, read):
    name, c = _pick(choose, tensors, read)
    squeezed = max(2, c // choose([2, 4]))
    pooled = b.op("GlobalAveragePool", [name])
    gate = b.op("Sigmoid", [b.conv(b.op("Relu", [b.conv(pooled, c, squeezed, k=1)]), squeezed,
                                   c, k=1)])
    return [(b.op("Mul", [name, gate]), c)]


def _channel_linear(b, choose, tensors, read):
    """ConvNeXt's pointwise Linear: NCHW -> NHWC, MatMul + bias on channels, back to NCHW."""
    name, c = _pick(choose, tensors, read)
    cout = choose(WIDTHS)
    last = b.op("Transpose", [name], perm=[0, 2, 3, 1])
    mixed = b.op("Add", [b.op("MatMul", [last, b.weight(c, cout)]), b.weight(cout)])
    if choose([True, False]):
        mixed = b.op("Relu", [mixed])
    return [(b.op("Transpose", [mixed], perm=[0, 3, 1, 2]), cout)]


def _pool(b, choose, tensors, read):
    """A same-size pooling (3×3, stride 1, padded): channels pass through."""
    name, c = _pick(choose, tensors, read)
    op = choose(["MaxPool", "AveragePool"])
    return [(b.op(op, [name], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]), c)]


def _group_norm(b, choose, tensors, read):
    """GroupNormalization (opset 21: scale and bias per channel) or InstanceNormalization."""
    name, c = _pick(choose, tensors, read)
    if choose([True, False]):
        return [(b.op("InstanceNormalization", [name, b.weight(c), b.weight(c)]), c)]
    groups = choose([g for g in (1, 2, 4) if c % g == 0])
    return [(b.op("GroupNormalization", [name, b.weight(c), b.weight(c)], num_groups=groups),
             c)]


def _scale(b, choose, tensors, read):
    """A per-channel constant (layer scale, folded BN): Mul or Add with a [C, 1, 1] tensor."""
    name, c = _pick(choose, tensors, read)
    return [(b.op(choose(["Mul", "Add"]), [name, b.weight(c, 1, 1)]), c)]


def _slice(b, choose, tensors, read):
    """Channels [start, stop) of a tensor (torch.chunk, narrow): one part of it."""
    picked = _pick(choose, tensors, read, lambda c: c >= 4)
    if picked is None:
        return []
    name, c = picked
    start, stop = choose([(0, c // 2), (c // 2, c), (1, c - 1)])
    out = b.op("Slice", [name, b.const(np.array([start])), b.const(np.array([stop])),
                         b.const(np.array([1]))])
    return [(out, stop - start)]


def _shuffle(b, choose, tensors, read):
    """ShuffleNet's channel shuffle: [N, g, C/g, H, W] → swap the group axes → [N, C, H, W]."""
    picked = _pick(choose, tensors, read, lambda c: c % 2 == 0)
    if picked is None:
        return []
    name, c = picked
    grid = b.op("Reshape", [name, b.const(np.array([-1, 2, c // 2, SIDE, SIDE]))])
    swapped = b.op("Transpose", [grid], perm=[0, 2, 1, 3, 4])
    return [(b.op("Reshape", [swapped, b.const(np.array([-1, c, SIDE, SIDE]))]), c)]


def _deconv(b, choose, tensors, read):
    """A same-size ConvTranspose (3×3, stride 1, padded), grouped or not."""
    name, cin = _pick(choose, tensors, read)
    cout = choose(WIDTHS)
    group = choose([g for g in (1, 2) if cin % g == 0 and cout % g == 0])
    weight = b.weight(cin, cout // group, 3, 3)
    return [(b.op("ConvTranspose", [name, weight, b.weight(cout)], kernel_shape=[3, 3],
                  pads=[1, 1, 1, 1], group=group), cout)]


def _head(b, choose, unread):
    """Every unread tensor reaches the output: pooled (or flattened whole) into a Gemm each,
    the logits summed."""
    logits = []
    for name, c in unread:
        if choose([True, False]):
            flat = b.op("Flatten", [b.op("GlobalAveragePool", [name])], axis=1)
            features = c
        else:
            flat = b.op("Flatten", [name], axis=1)
            features = c * SIDE * SIDE
        logits.append(b.op("Gemm", [flat, b.weight(CLASSES, features), b.weight(CLASSES)],
                           transB=1))
    total = logits[0]
    for other in logits[1:]:
        total = b.op("Add", [total, other])
    return total


def _const_values(b, name):
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in b.initializers if t.name == name)
