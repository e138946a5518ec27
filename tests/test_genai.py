"""onnxruntime-genai folders (issue 16, item 3): a tiny Llama converted by the genai model
builder prunes its MLP neurons and grouped-query-attention heads. By default the KV cache
keeps its key/value heads and query heads go evenly from every group; with
``--allow-cache-change`` whole key/value groups go, the cache inputs and outputs lose them,
and ``genai_config.json`` is written updated beside the output. Proof: onnxruntime-genai loads
the pruned folder and generates greedily exactly what the masked original generates."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from onnxprune.io import save_model
from onnxprune.pipeline import analyze_model, masked_original

og = pytest.importorskip("onnxruntime_genai")
pytest.importorskip("transformers")

from .genai_models import genai_folder, greedy, tiny_llama  # noqa: E402

PROMPTS = ([5, 17, 42, 99], [3, 4, 5, 6, 7, 8, 9, 10, 11])


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    root = tmp_path_factory.mktemp("genai")
    return genai_folder(tiny_llama(root / "hf"), root / "fp32")


def _prune_cli(folder, out, *flags, width=("--ratio", "0.5", "--round-to", "1")):
    from onnxprune.cli import main

    out.mkdir(exist_ok=True)
    report = out / "report.json"
    assert main(["prune", str(folder / "model.onnx"), "-o", str(out / "model.onnx"),
                 *width, "--report", str(report), *flags]) == 0
    return json.loads(report.read_text())


def _masked_folder(folder, out, allow_cache_change: bool):
    """The masked original of the same plan, in a copy of the dense folder."""
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("model.onnx*"))
    analyzed = analyze_model(str(folder / "model.onnx"), allow_cache_change=allow_cache_change)
    _, masked = masked_original(analyzed, ratio=0.5, round_to=1)
    save_model(masked, out / "model.onnx")
    return out


def _gqa(model) -> list[tuple[int, int]]:
    return [tuple(onnx.helper.get_attribute_value(a) for a in n.attribute
                  if a.name in ("num_heads", "kv_num_heads"))
            for n in model.graph.node if n.op_type == "GroupQueryAttention"]


def _cache_heads(model) -> set[int]:
    return {info.type.tensor_type.shape.dim[1].dim_value
            for info in list(model.graph.input) + list(model.graph.output)
            if info.name.startswith(("past_key_values", "present"))}


def test_query_heads_and_mlp_prune_and_the_cache_stays(fp32, tmp_path):
    report = _prune_cli(fp32, tmp_path / "pruned")
    assert report["check"]["ok"] and report["check"]["max_rel_error"] == 0.0
    kinds = {g["kind"] for g in report["groups"] if g["removed"]}
    assert kinds == {"heads", "mlp"}
    pruned = onnx.load(str(tmp_path / "pruned" / "model.onnx"))
    assert _gqa(pruned) == [(2, 2), (2, 2)]           # one query head left in each group
    assert _cache_heads(pruned) == {2}
    config = json.loads((tmp_path / "pruned" / "genai_config.json").read_text())
    assert config["model"]["decoder"]["num_attention_heads"] == 2
    assert config["model"]["decoder"]["num_key_value_heads"] == 2
    masked = _masked_folder(fp32, tmp_path / "masked", allow_cache_change=False)
    for prompt in PROMPTS:
        assert greedy(tmp_path / "pruned", prompt) == greedy(masked, prompt)


def test_allow_cache_change_drops_key_value_groups_and_resizes_the_cache(fp32, tmp_path):
    report = _prune_cli(fp32, tmp_path / "pruned", "--allow-cache-change")
    assert report["check"]["ok"] and report["check"]["max_rel_error"] == 0.0
    pruned = onnx.load(str(tmp_path / "pruned" / "model.onnx"))
    assert _gqa(pruned) == [(2, 1), (2, 1)]           # half the key/value groups (of two)
    assert _cache_heads(pruned) == {1}
    names = [i.name for i in pruned.graph.input] + [o.name for o in pruned.graph.output]
    dense = onnx.load(str(fp32 / "model.onnx"), load_external_data=False)
    assert names == [i.name for i in dense.graph.input] + [o.name for o in dense.graph.output]
    config = json.loads((tmp_path / "pruned" / "genai_config.json").read_text())
    assert (config["model"]["decoder"]["num_attention_heads"],
            config["model"]["decoder"]["num_key_value_heads"]) == (2, 1)
    assert (tmp_path / "pruned" / "tokenizer.json").exists()
    masked = _masked_folder(fp32, tmp_path / "masked", allow_cache_change=True)
    for prompt in PROMPTS:
        assert greedy(tmp_path / "pruned", prompt) == greedy(masked, prompt)


def test_a_genai_folder_is_never_left_inconsistent(fp32, tmp_path, capsys):
    """--in-place would leave the config describing the dense model: refused before any
    write. An output in the model's own folder is written, and the config is not touched."""
    from onnxprune.cli import main

    folder = tmp_path / "copy"
    shutil.copytree(fp32, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["prune", str(folder / "model.onnx"), "--in-place", "--round-to", "1"]) == 2
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert main(["prune", str(folder / "model.onnx"), "-o", str(folder / "small.onnx"),
                 "--round-to", "1"]) == 0
    assert (folder / "genai_config.json").read_bytes() == before["genai_config.json"]
    assert "genai_config.json not written" in capsys.readouterr().out


def test_int4_folder_prunes_by_whole_blocks_and_keeps_generating(tmp_path_factory, fp32,
                                                                  tmp_path):
    """The builder's int4 model (MatMulNBits, 4-bit, block 32): MLP neurons go by whole
    blocks of the down projection's inputs, key/value groups with the cache change; the
    weights stay 4-bit and genai generation equals the masked original's."""
    int4 = genai_folder(fp32.parent / "hf", fp32.parent / "int4", "int4")
    report = _prune_cli(int4, tmp_path / "pruned", "--allow-cache-change")
    assert report["check"]["ok"] and report["check"]["max_rel_error"] == 0.0
    assert {g["kind"] for g in report["groups"] if g["removed"]} == {"heads", "mlp"}
    assert report["params"]["after"] == report["params"]["planned_after"]
    pruned = onnx.load(str(tmp_path / "pruned" / "model.onnx"))
    assert {n.op_type for n in pruned.graph.node} >= {"MatMulNBits", "GroupQueryAttention"}
    assert _gqa(pruned) == [(2, 1), (2, 1)]
    masked = _masked_folder(int4, tmp_path / "masked", allow_cache_change=True)
    for prompt in PROMPTS:
        assert greedy(tmp_path / "pruned", prompt) == greedy(masked, prompt)


def test_allow_cache_change_on_a_model_without_a_cache_is_refused(tmp_path, capsys):
    from onnxprune.cli import main

    from .builder import GraphBuilder

    b = GraphBuilder()
    out = b.op("MatMul", [b.op("Relu", [b.op("MatMul", ["x", b.weight(8, 16)])]),
                          b.weight(16, 8)])
    onnx.save(b.model({"x": [2, 8]}, [out]), tmp_path / "mlp.onnx")
    assert main(["prune", str(tmp_path / "mlp.onnx"), "--allow-cache-change"]) == 2
    assert "no KV cache" in capsys.readouterr().err


def test_the_hidden_size_prunes_through_rms_norms_when_asked(fp32, tmp_path):
    """--hidden: the residual stream through SimplifiedLayerNormalization and
    SkipSimplifiedLayerNormalization (opt-in: the norms then average over fewer channels).
    The masked original rebuilds those norms over the kept channels; genai generation from
    the pruned folder (hidden_size updated) equals the masked original's."""
    report = _prune_cli(fp32, tmp_path / "pruned", "--hidden", "0.25")
    assert report["check"]["ok"]
    hidden = [g for g in report["groups"] if g["kind"] == "hidden"]
    assert len(hidden) == 1 and len(hidden[0]["kept"]) == 48
    config = json.loads((tmp_path / "pruned" / "genai_config.json").read_text())
    assert config["model"]["decoder"]["hidden_size"] == 48
    out = tmp_path / "masked"
    shutil.copytree(fp32, out, ignore=shutil.ignore_patterns("model.onnx*"))
    _, masked = masked_original(analyze_model(str(fp32 / "model.onnx")), ratio=0.5,
                                round_to=1, by_kind={"hidden": 0.25})
    save_model(masked, out / "model.onnx")
    # The norms are rebuilt from other ops in the masked original: float rounding differs at
    # 1e-6 (the check's error), which can flip a near-tie between random-weight logits.
    pairs = [(greedy(tmp_path / "pruned", p), greedy(out, p)) for p in PROMPTS]
    same = sum(a == b for got, want in pairs for a, b in zip(got, want))
    assert same >= 0.9 * sum(len(want) for _, want in pairs)


def test_blocks_drop_an_mlp_sub_block_of_the_fused_decoder(fp32, tmp_path):
    """--blocks on the genai decoder: its residuals are fused into
    SkipSimplifiedLayerNormalization; the attention sub-blocks write the KV cache (graph
    outputs) so only MLP sub-blocks are candidates. One goes; the folder loads and generates
    as the original with that branch zeroed does."""
    from onnxprune.graph import ModelGraph
    from onnxprune.graph.residual import residual_blocks
    from onnxprune.rewrite.depth import drop_blocks

    report = _prune_cli(fp32, tmp_path / "pruned", "--blocks", "1", width=())
    depth = report["depth"]
    assert depth["candidates"] == 2 and len(depth["removed"]) == 1 and depth["check"]["ok"]
    dense = analyze_model(str(fp32 / "model.onnx")).model
    gone = [b for b in residual_blocks(ModelGraph(dense)) if b.label ==
            depth["removed"][0]["block"]]
    out = tmp_path / "masked"
    shutil.copytree(fp32, out, ignore=shutil.ignore_patterns("model.onnx*"))
    save_model(drop_blocks(dense, gone, "mask"), out / "model.onnx")
    pairs = [(greedy(tmp_path / "pruned", p), greedy(out, p)) for p in PROMPTS]
    same = sum(a == b for got, want in pairs for a, b in zip(got, want))
    assert same >= 0.9 * sum(len(want) for _, want in pairs)    # fused vs unfused norm: 1e-6


def test_data_driven_criteria_calibrate_one_sample_at_a_time(fp32, tmp_path):
    """ORT's GroupQueryAttention takes a batch of one only when a past cache comes with
    several new tokens, so random calibration batches of 16 fail on a genai decoder: capture
    and the fidelity comparison fall back to one sample per run (wanda and OBS compensation
    then work on the folder as deployed)."""
    report = _prune_cli(fp32, tmp_path / "pruned", "--criterion", "wanda", "--calib", "random",
                        "--compensate", "obs")
    assert report["check"]["ok"]
    assert report["strategy"]["calibration"]["samples"] == 32
    assert report["fidelity"]["samples"] == 32
    assert report["fidelity"]["inputs"].startswith("fresh random inputs")
    assert len(greedy(tmp_path / "pruned", PROMPTS[0])) > len(PROMPTS[0])
