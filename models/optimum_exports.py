"""A tiny Llama exported to ONNX by Hugging Face Optimum, as a user of ``optimum-cli export
onnx --task text-generation-with-past`` gets it: the fixture ``tests/fixtures/
optimum_tiny_llama.onnx`` (past key/values as graph inputs and ``present.*`` outputs, the
exporter's own attention-mask and position plumbing). Optimum's exporter pins an older
transformers (``optimum-onnx`` wants transformers < 4.58) and brings torch, so it does not
install beside the dev extras; run this once in an environment of its own::

    python3 -m venv /tmp/optenv && /tmp/optenv/bin/pip install torch==2.14.1 \\
        "optimum-onnx[onnxruntime]==0.1.0" optimum==2.1.0 transformers==4.57.6
    /tmp/optenv/bin/python models/optimum_exports.py tests/fixtures

Nothing is downloaded: the model is built from a ``LlamaConfig`` with random (seeded)
weights and the tokenizer is a tiny word-level one made on the spot (the exporter does not
need it, but a real checkpoint folder has one), both saved to a temporary folder that the
exporter reads with ``local_files_only``. ``main_export`` is what ``optimum-cli export onnx
--model FOLDER --task text-generation-with-past --opset 17`` calls: the CLI writes the same
graph. The output is byte-for-byte the same on every run. The tests check structure and the
oracle, not a task.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

VOCAB = 128


def save_tiny_llama(folder: Path) -> None:
    """Write a 2-layer GQA Llama (hidden 32, 4 heads, 2 KV heads) and a matching tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>", unk_token="<unk>").save_pretrained(folder)


def main(folder: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import onnx
    from optimum.exporters.onnx import main_export

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "hf", Path(tmp) / "onnx"
        save_tiny_llama(src)
        main_export(str(src), output=str(dst), task="text-generation-with-past", opset=17,
                    local_files_only=True, library_name="transformers")
        # Re-save through onnx so that every weight is embedded (the model is tiny).
        model = onnx.load(str(dst / "model.onnx"), load_external_data=True)
        target = out / "optimum_tiny_llama.onnx"
        onnx.save_model(model, str(target), save_as_external_data=False)
        print("wrote", target, target.stat().st_size, "bytes")
        print("exporter wrote", sorted(p.name for p in dst.iterdir()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
