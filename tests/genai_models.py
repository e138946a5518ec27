"""Tiny onnxruntime-genai models made by the real tools: a Llama with grouped-query attention
(4 query heads over 2 key/value heads, random weights, a 256-symbol character tokenizer) saved
by transformers, then converted by onnxruntime-genai's model builder (fp32 or int4), as a user
deploys one. Tests skip where onnxruntime-genai is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np


def tiny_llama(folder: Path) -> Path:
    """A Hugging Face Llama folder (config, weights, tokenizer) in ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    character_tokenizer(folder)
    return folder


def character_tokenizer(folder: Path) -> None:
    """A 256-symbol character tokenizer (ids 0-2: pad, bos, eos) saved in ``folder``: the
    model builder copies one into the genai folder. ``benchmarks.llama_1b`` uses it too."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(3)} | {chr(32 + i): 3 + i for i in range(253)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<0>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<1>", eos_token="<2>",
                            pad_token="<0>", unk_token="<0>").save_pretrained(folder)


def genai_folder(hf_folder: Path, out: Path, precision: str = "fp32") -> Path:
    """onnxruntime-genai's model builder run on ``hf_folder``: ``out`` holds model.onnx, its
    data, genai_config.json and the tokenizer files."""
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i",
                    str(hf_folder), "-o", str(out), "-p", precision, "-e", "cpu", "-c",
                    str(out.parent / f"cache_{precision}")], check=True, capture_output=True)
    return out


def greedy(folder: Path, prompt: list[int], length: int = 40) -> list[int]:
    """Greedy generation with onnxruntime-genai from the model folder ``folder``."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=length, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([prompt], dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)]
