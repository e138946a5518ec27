"""``com.microsoft:SkipLayerNormalization(input, skip, γ, β, bias)``: ONNX Runtime's
transformer optimizer fuses each residual Add and the LayerNorm after it into this op in
BERT-like encoders (the output projection's bias moves in as ``bias``). Its fourth output,
when used, is ``input + skip + bias``, the residual stream.

As for the RMS variant (``rmsnorm``): input and skip are tied like a residual Add; channels
on the normalized last axis are the hidden size (opt-in), γ, β and the bias are sliced, and
the masked original is rebuilt from standard ops that normalize over the kept channels.
"""

from __future__ import annotations

from .base import register
from .hidden import layer_norm_over_kept
from .rmsnorm import MS, SkipSimplifiedLayerNormRule


@register(MS + "SkipLayerNormalization")
class SkipLayerNormRule(SkipSimplifiedLayerNormRule):
    gamma, per_channel, extra_outputs = 2, (2, 3, 4), (1, 2)
    sum_bias = 4
    scale_input = gamma

    def normalized(self, node, ctx, x, keep, dtype, epsilon, output) -> None:
        layer_norm_over_kept(node, ctx, x, keep, dtype, epsilon, node.input(2),
                             node.input(3), output)
