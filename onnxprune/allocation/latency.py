"""Latency targets: predict a plan's latency from a per-layer table measured on ONNX Runtime.

The dense model is timed whole; each Conv/Gemm/MatMul layer is timed alone at the widths a plan
gives it (multiples of ``round_to``, so the table is measured at the hardware-friendly widths
the plan will actually use), and so is each weightless node whose time follows what it reads
(activations, pools, concats, norms; see ``runtime.layer_table``) at the shapes the plan gives
its inputs. A plan's latency is predicted as the dense latency scaled by the timed nodes'
summed latency at the plan's shapes over their summed dense latency, what was not timed being
assumed to follow in proportion. The pruned model is then timed for real, and the report gives
both numbers.
"""

from __future__ import annotations

import onnx

from ..runtime import LayerLatencyTable, measure_latency
from ..runtime.latency_store import LatencyStore, place

MEASURE_BUDGET_S = 1.0      # seconds of timed runs per whole-model measurement


class LatencyPredictor:
    """``device``: predict from the timings a deployment device took (a section of the table
    at ``table_path`` that ``runtime.device_timer`` wrote); nothing is timed here then, and
    ``dense`` is None."""

    def __init__(self, model: onnx.ModelProto, input_shapes=None, threads: int = 1,
                 progress=None, table_path=None, streams: bool = True,
                 device: str | None = None):
        self.threads, self.input_shapes = threads, input_shapes
        store = (LatencyStore(table_path, place("CPUExecutionProvider", threads), device)
                 if table_path is not None else None)
        self.device = store.section if device is not None else None
        self.table = LayerLatencyTable(model, input_shapes, threads, store=store,
                                       streams=streams)
        self.stale = self.table.stale     # the table's timings were doubted, and how
        self.dense_layers = self.table.dense_total(progress)
        self.widths, self.streams = self.table.layers(), self.table.streams()  # timed ones
        self.dense = self.measure(model) if self.device is None else None

    def fraction(self, weight_dims: dict[tuple[int, int], list[int]],
                 stream_shapes: dict[int, list] | None = None) -> float:
        """Predicted latency of a plan over the dense latency; ``weight_dims`` maps (node,
        input index) to the sliced weight's dims, ``stream_shapes`` a stream node to its
        inputs' shapes (dense where absent)."""
        if self.dense_layers <= 0:
            return 1.0
        total = sum(self.layer_cost(node, weight_dims.get((node, 1))) for node in self.widths)
        total += sum(self.stream_cost(node, (stream_shapes or {}).get(node))
                     for node in self.streams)
        return total / self.dense_layers

    def layer_cost(self, node: int, dims=None) -> float:
        """Seconds of one timed layer with its weight sliced to ``dims`` (None: dense)."""
        widths = self.table.widths(node, dims) if dims is not None else self.widths[node]
        return self.table.cost(node, *widths)

    def stream_cost(self, node: int, shapes=None) -> float:
        """Seconds of one weightless node with its inputs at ``shapes`` (None: dense)."""
        layer = self.streams[node]
        shapes = layer.shapes if shapes is None else shapes
        try:
            return self.table.stream_latency(node, shapes)
        except Exception:  # noqa: BLE001 - ORT refuses this shape: scale the dense time
            return (self.table.stream_latency(node, layer.shapes) *
                    layer.size(shapes) / max(layer.size(layer.shapes), 1))

    def measure(self, model: onnx.ModelProto) -> float:
        """The fastest of many timed runs (the most repeatable figure on a shared machine)."""
        if self.device is not None:
            raise RuntimeError("a device's table predicts; the model is not timed here")
        return measure_latency(model, threads=self.threads, input_shapes=self.input_shapes,
                               budget_s=MEASURE_BUDGET_S).min

    def save(self) -> tuple[int, int]:
        """Keep what was timed (with ``table_path``); returns the layer timings read from the
        file and those timed in this run."""
        if self.table.store is not None:
            self.table.store.save()
        return self.table.reused, self.table.timed

