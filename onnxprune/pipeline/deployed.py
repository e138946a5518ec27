"""Deployed model folders: an onnxruntime-genai folder holds ``genai_config.json`` beside the
model, which names its head counts and hidden size. A pruned model that lost heads needs that file updated
next to it, or onnxruntime-genai would size its KV cache for the dense model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import onnx

from ..errors import UserError
from ..io import write_atomically

GENAI_CONFIG = "genai_config.json"
_ATTENTION = ("GroupQueryAttention", "MultiHeadAttention", "Attention")


def genai_config_for(model_path, pruned: onnx.ModelProto, output) -> dict | None:
    """The ``genai_config.json`` for ``pruned`` written to ``output``, when ``model_path``
    sits in an onnxruntime-genai folder; None otherwise. UserError (before anything is
    written) when the pruned layers keep different head counts, which the file, with one
    count for all layers, cannot describe."""
    if not isinstance(model_path, (str, os.PathLike)):
        return None
    source = Path(model_path).parent / GENAI_CONFIG
    if not source.is_file():
        return None
    try:
        config = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{source} beside the model cannot be read as JSON ({exc})") from None
    decoder = config.get("model", {}).get("decoder")
    if not isinstance(decoder, dict):
        return None
    counts = {(_attr(n, "num_heads"), _attr(n, "kv_num_heads")) for n in pruned.graph.node
              if n.op_type in _ATTENTION and n.domain == "com.microsoft"}
    if len(counts) > 1:
        raise UserError(f"the pruned layers keep different head counts ({sorted(counts)}), "
                        f"which {GENAI_CONFIG} (one count for every layer) cannot describe; "
                        "prune with --allocation uniform")
    hidden = _hidden_size(pruned)
    if hidden is not None and "hidden_size" in decoder:
        decoder["hidden_size"] = hidden
    if counts:
        heads, kv = counts.pop()
        if heads is not None:
            decoder["num_attention_heads"] = heads
        if kv is not None:
            decoder["num_key_value_heads"] = kv
    decoder["filename"] = Path(output).name
    return config


def write_genai_folder(model_path, output, config: dict) -> list[str]:
    """Write ``config`` beside ``output`` and copy the folder's other files (tokenizer and
    processing files) that are not there yet; returns what was written. Nothing is written
    into the model's own folder, whose files are the input's."""
    source, target = Path(model_path).parent, Path(output).parent
    if source.resolve() == target.resolve():
        return []
    written = [GENAI_CONFIG]
    data = json.dumps(config, indent=4)
    write_atomically(target / GENAI_CONFIG,
                     lambda tmp: Path(tmp).write_text(data, encoding="utf-8"))
    model_files = {Path(model_path).name, Path(model_path).name + ".data", GENAI_CONFIG}
    for item in sorted(source.iterdir()):
        if item.is_file() and item.name not in model_files and not item.name.endswith(
                (".onnx", ".onnx.data", ".data")) and not (target / item.name).exists():
            shutil.copy2(item, target / item.name)
            written.append(item.name)
    return written


_NORM_SCALE = {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 2,
               "LayerNormalization": 1, "SkipLayerNormalization": 2}


def _hidden_size(model: onnx.ModelProto) -> int | None:
    """The hidden size: the length of the first normalization's scale (it changes when
    ``--hidden`` prunes it)."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        index = _NORM_SCALE.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in dims:
            return int(dims[node.input[index]][-1])
    return None


def _attr(node: onnx.NodeProto, name: str) -> int | None:
    return next((int(a.i) for a in node.attribute if a.name == name), None)
