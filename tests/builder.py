"""A tiny builder for hand-made ONNX graphs that exercise one channel pattern each."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    def __init__(self, opset: int = 17, seed: int = 0):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, *shape) -> str:
        return self.const(self.rng.standard_normal(shape).astype(np.float32) * 0.5, "w")

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(f"n_{op_type}_"),
                                           **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True):
        inputs = [x, self.weight(cout, cin // group, k, k)]
        if bias:
            inputs.append(self.weight(cout))
        return self.op("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4, group=group)

    def bn(self, x: str, c: int):
        scale = self.weight(c)
        bias = self.weight(c)
        mean = self.weight(c)
        var = self.const(self.rng.uniform(0.5, 2.0, c).astype(np.float32))
        return self.op("BatchNormalization", [x, scale, bias, mean, var])

    def model(self, inputs: dict[str, list], outputs: list[str], shapes=None) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "test",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, (shapes or {}).get(o))
             for o in outputs],
            self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = min(model.ir_version, 10)
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {v.name: v for v in inferred.graph.output if v.type.tensor_type.HasField("shape")}
        for out in model.graph.output:
            if out.name in known:
                out.CopyFrom(known[out.name])
        onnx.checker.check_model(model, full_check=True)
        return model
