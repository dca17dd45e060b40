"""`skipsearch export-draft --format gguf`: the skipped model as a llama.cpp GGUF of architecture deci
(`skipsearch.config.gguf_export`), read back with gguf-py's GGUFReader and compared with its source: per-layer
arrays, kept tensors byte for byte in their stored types, skipped tensors absent, the zero FFNs that stand in
for FFN length 0 where llama.cpp's deci graph would drop the attention output, the tokenizer keys.

The fast tests export a tiny Llama GGUF written here (Q4_1 and Q8_0 tensors quantised by gguf-py); the
integration test exports the embedded SmolLM2 (Q4_1) through the command. `run_deci` restates llama.cpp's
deci graph in numpy, flaws included, and computes with an F32 draft of a tiny HF Llama: its logits equal
the skipped model's, and fall apart where the export writes FFN length 0 for a layer with attention or
for the last layer (both seen failing once)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import quantize

from skipsearch.cli import export_draft_cmd, main
from skipsearch.config.gguf_export import deci_layers, kept_tensors, write_gguf_draft
from skipsearch.config.profiles import DraftSettings, Profile, ProfileModel, save_profile
from skipsearch.engine.drafting import NgramSettings
from skipsearch.engine.models import embedded_model_path, model_fingerprint
from skipsearch.engine.skipping import SkipSet, skipping
from skipsearch.errors import SkipsearchError

from conftest import make_tiny, make_tokenizer

# layer 1 skips its attention only, 2 its MLP only, 3 (the last) both
TINY_SKIP = SkipSet(attention=(1, 3), mlp=(2, 3))
EMBD, HEADS, KV_HEADS, FFN, VOCAB, LAYERS = 64, 4, 2, 128, 64, 4


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _fails_with_one_line(argv, capsys, message):
    capsys.readouterr()
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def _profile(skip: SkipSet, name: str = "tiny.gguf", layers: int = LAYERS, architecture: str = "llama",
             fingerprint: str = "sha256:" + "0" * 64) -> Profile:
    return Profile(model=ProfileModel(name, architecture, layers, fingerprint), task="toy", skip=skip,
                   draft=DraftSettings(max_draft_tokens=5, confidence_threshold=0.8))


def _tiny_gguf(path, architecture: str = "llama", extra_tensor: str | None = None):
    """A Llama GGUF the way llama.cpp's converter lays one out: scalar head counts and FFN length, a tokenizer,
    Q8_0 embeddings (tied LM head), Q4_1 projections, F32 norms."""
    rng = np.random.default_rng(0)
    writer = GGUFWriter(path, arch=architecture)
    writer.add_string("general.name", "tiny")
    writer.add_uint32(f"{architecture}.block_count", LAYERS)
    writer.add_uint32(f"{architecture}.context_length", 512)
    writer.add_uint32(f"{architecture}.embedding_length", EMBD)
    writer.add_uint32(f"{architecture}.feed_forward_length", FFN)
    writer.add_uint32(f"{architecture}.attention.head_count", HEADS)
    writer.add_uint32(f"{architecture}.attention.head_count_kv", KV_HEADS)
    writer.add_float32(f"{architecture}.rope.freq_base", 10000.0)
    writer.add_float32(f"{architecture}.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(VOCAB)])
    writer.add_array("tokenizer.ggml.token_type", [1] * VOCAB)
    writer.add_uint32("tokenizer.ggml.bos_token_id", 1)

    def quantised(name, rows, columns, kind):
        writer.add_tensor(name, quantize(rng.standard_normal((rows, columns)).astype(np.float32), kind),
                          raw_dtype=kind)

    quantised("token_embd.weight", VOCAB, EMBD, GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", rng.standard_normal(EMBD).astype(np.float32))
    head = EMBD // HEADS
    for layer in range(LAYERS):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", rng.standard_normal(EMBD).astype(np.float32))
        for part, rows in [("attn_q", EMBD), ("attn_k", KV_HEADS * head), ("attn_v", KV_HEADS * head),
                           ("attn_output", EMBD), ("ffn_gate", FFN), ("ffn_up", FFN)]:
            quantised(f"blk.{layer}.{part}.weight", rows, EMBD, GGMLQuantizationType.Q4_1)
        quantised(f"blk.{layer}.ffn_down.weight", EMBD, FFN, GGMLQuantizationType.Q4_1)
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", rng.standard_normal(EMBD).astype(np.float32))
    if extra_tensor:
        writer.add_tensor(extra_tensor, np.zeros(EMBD, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _expected_arrays(skip: SkipSet, layers: int, heads: int, kv_heads: int, ffn: int):
    """What llama.cpp must read, restated: 0 for a skipped block, except that a skipped FFN in a layer that keeps
    its attention, or in the last layer, is a one-wide zero FFN (width 1)."""
    last = layers - 1
    head_count = [0 if i in skip.attention else heads for i in range(layers)]
    head_count_kv = [0 if i in skip.attention else kv_heads for i in range(layers)]
    widths = [ffn if i not in skip.mlp else (1 if i not in skip.attention or i == last else 0) for i in range(layers)]
    return head_count, head_count_kv, widths


def check_draft(draft_path, source_path, skip: SkipSet, zero_layers: tuple[int, ...]):
    """Read the draft back and compare it with its source; returns the draft's reader."""
    draft, source = GGUFReader(draft_path), GGUFReader(source_path)
    fields = {f.name: f.contents() for f in draft.fields.values()}
    source_fields = {f.name: f.contents() for f in source.fields.values()}
    assert fields["general.architecture"] == "deci"
    layers = source_fields["llama.block_count"]
    head_count, head_count_kv, widths = _expected_arrays(
        skip, layers, source_fields["llama.attention.head_count"], source_fields["llama.attention.head_count_kv"],
        source_fields["llama.feed_forward_length"])
    assert fields["deci.attention.head_count"] == head_count
    assert fields["deci.attention.head_count_kv"] == head_count_kv
    assert fields["deci.feed_forward_length"] == widths
    assert [i for i, width in enumerate(widths) if width == 1] == list(zero_layers)
    per_layer = {"llama.attention.head_count", "llama.attention.head_count_kv", "llama.feed_forward_length"}
    for name, value in source_fields.items():  # the tokenizer, general.* and the renamed llama.* keys
        if name.startswith("GGUF.") or name == "general.architecture" or name in per_layer:
            continue
        renamed = "deci." + name[len("llama."):] if name.startswith("llama.") else name
        assert fields[renamed] == value, name
    head_dim = source_fields["llama.embedding_length"] // source_fields["llama.attention.head_count"]
    assert fields["deci.attention.key_length"] == fields["deci.rope.dimension_count"] == head_dim

    tensors = {t.name: t for t in draft.tensors}
    source_tensors = {t.name: t for t in source.tensors}
    skipped = {name for name in source_tensors
               if any(name.startswith(f"blk.{i}.attn_") for i in skip.attention)
               or any(name.startswith(f"blk.{i}.ffn_") for i in skip.mlp)}
    zero_names = {f"blk.{i}.{part}.weight" for i in zero_layers
                  for part in ("ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == (set(source_tensors) - skipped) | zero_names
    for name, tensor in tensors.items():
        if name in zero_names:
            assert tensor.tensor_type == GGMLQuantizationType.F32 and not np.any(tensor.data), name
            width_axis = 0 if "ffn_down" in name else 1  # ggml order: gate/up {n_embd, 1}, down {1, n_embd}
            assert "ffn_norm" in name or int(tensor.shape[width_axis]) == 1, (name, tensor.shape)
            continue
        want = source_tensors[name]
        assert tensor.tensor_type == want.tensor_type and list(tensor.shape) == list(want.shape), name
        assert tensor.data.tobytes() == want.data.tobytes(), name
    return draft


def test_the_tiny_gguf_draft_keeps_the_source_tensors_byte_for_byte(tmp_path):
    source = _tiny_gguf(tmp_path / "tiny.gguf")
    written = write_gguf_draft(source, _profile(TINY_SKIP), str(tmp_path / "draft"))
    assert written.file == tmp_path / "draft" / "tiny-draft.gguf"
    # layer 2 keeps its attention and layer 3 is the last: both get the zero FFN; none has FFN length 0
    draft = check_draft(written.file, source, TINY_SKIP, zero_layers=(2, 3))
    assert written.layers.zero_ffn == (2, 3)
    types = {t.tensor_type for t in draft.tensors}
    assert {GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0} <= types
    assert written.memory.weights == sum(int(t.n_bytes) for t in draft.tensors)
    assert written.memory.kv_per_token == 2 * 2 * KV_HEADS * (EMBD // HEADS) * 2  # layers 0 and 2, K and V, f16
    readme = (tmp_path / "draft" / "README.md").read_text()
    assert f"-md {written.file} --spec-type draft-simple --spec-draft-n-max 5 --spec-draft-p-min 0.8" in readme
    assert "llama-speculative-simple -m" in readme and "llama-server -m" in readme
    assert f"| {written.memory.weights} (" in readme


def test_a_layer_that_skips_both_blocks_before_the_last_has_ffn_length_0():
    layers = deci_layers([4] * 4, [2] * 4, [128] * 4, SkipSet(attention=(1, 2), mlp=(1, 3)))
    assert layers.head_count == [4, 0, 0, 4] and layers.head_count_kv == [2, 0, 0, 2]
    assert layers.feed_forward_length == [128, 0, 128, 1] and layers.zero_ffn == (3,)


def test_layer_0_without_attention_is_refused():
    with pytest.raises(SkipsearchError, match="layer 0's attention"):
        deci_layers([4] * 4, [2] * 4, [128] * 4, SkipSet(attention=(0,)))


def test_a_tensor_a_llama_has_not_is_refused(tmp_path):
    with pytest.raises(SkipsearchError, match="blk.0.ffn_gate_exps.weight"):
        kept_tensors(["token_embd.weight", "blk.0.ffn_gate_exps.weight"], SkipSet(mlp=(1,)))
    source = _tiny_gguf(tmp_path / "tiny.gguf", extra_tensor="blk.1.attn_q_norm.weight")
    with pytest.raises(SkipsearchError, match="not one of a Llama layer's"):
        write_gguf_draft(source, _profile(TINY_SKIP), str(tmp_path / "draft"))
    assert not (tmp_path / "draft").exists()


def test_a_gguf_of_another_architecture_is_refused(tmp_path):
    source = _tiny_gguf(tmp_path / "tiny.gguf", architecture="qwen3")
    with pytest.raises(SkipsearchError, match="exports Llama GGUF files .* is 'qwen3'"):
        write_gguf_draft(source, _profile(TINY_SKIP), str(tmp_path / "draft"))


def test_a_non_empty_folder_is_refused_unless_forced(tmp_path):
    (tmp_path / "models").mkdir()
    source = _tiny_gguf(tmp_path / "models" / "tiny.gguf")
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "old.txt").write_text("keep me")
    with pytest.raises(SkipsearchError, match="is not empty; choose a new folder, or pass --force"):
        write_gguf_draft(source, _profile(TINY_SKIP), str(draft))
    assert [p.name for p in draft.iterdir()] == ["old.txt"]
    with pytest.raises(SkipsearchError, match="the model's own folder"):  # --force must not remove the source
        write_gguf_draft(source, _profile(TINY_SKIP), str(tmp_path / "models"), force=True)
    assert source.exists()
    write_gguf_draft(source, _profile(TINY_SKIP), str(draft), force=True)
    assert sorted(p.name for p in draft.iterdir()) == ["README.md", "tiny-draft.gguf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["draft", "models"]  # no temporary left


def _saved_profile(tmp_path, profile: Profile, name: str = "profile.yaml"):
    path = tmp_path / name
    save_profile(profile, path)
    return path


def test_the_command_refuses_layer_0_without_attention_before_loading(tmp_path, capsys):
    source = _tiny_gguf(tmp_path / "tiny.gguf")  # transformers could not load it: the refusal comes first
    profile = _saved_profile(tmp_path, _profile(SkipSet(attention=(0,)), name=str(source)))
    _fails_with_one_line(["export-draft", str(profile), str(tmp_path / "draft"), "--format", "gguf"], capsys,
                         "needs layer 0's attention")
    assert not (tmp_path / "draft").exists()


def test_the_command_refuses_a_profile_that_skips_nothing_before_loading(tmp_path, capsys):
    ngram_only = dataclasses.replace(_profile(SkipSet(), name="x.gguf"), draft=DraftSettings(
        max_draft_tokens=5, confidence_threshold=0.8, ngram=NgramSettings()))
    profile = _saved_profile(tmp_path, ngram_only)
    _fails_with_one_line(["export-draft", str(profile), str(tmp_path / "draft"), "--format", "gguf"], capsys,
                         "the profile skips nothing")


def test_the_command_refuses_a_non_llama_family(tmp_path, capsys):
    profile = _saved_profile(tmp_path, _profile(TINY_SKIP, name="x.gguf", architecture="qwen3"))
    _fails_with_one_line(["export-draft", str(profile), str(tmp_path / "draft"), "--format", "gguf"], capsys,
                         "Llama-family models only")


def test_the_command_refuses_a_model_that_is_not_a_gguf(tmp_path, capsys):
    """An HF folder or hub id: the HF-to-GGUF conversion (q/k rows permuted for llama.cpp's rope, the tokenizer
    in GGUF form) is llama.cpp's converter's job."""
    model = make_tiny("llama")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    profile = _saved_profile(tmp_path, _profile(TINY_SKIP, name=str(folder), fingerprint=model_fingerprint(model)))
    _fails_with_one_line(["export-draft", str(profile), str(tmp_path / "draft"), "--format", "gguf"], capsys,
                         "convert the model with llama.cpp's convert_hf_to_gguf.py first")
    _fails_with_one_line(["export-draft", str(profile), str(tmp_path / "draft"), "--format", "gguf",
                          "--model", "org/name"], capsys, "--format gguf needs a .gguf model")
    assert not (tmp_path / "draft").exists()


# attention only: 3; MLP only: 4 and 7; both: 5 (FFN length 0) and 29, the last (zero FFN)
SMOLLM_SKIP = SkipSet(attention=(3, 5, 29), mlp=(4, 5, 7, 29))


@pytest.mark.integration
def test_the_smollm2_draft_keeps_its_q4_1_tensors(tmp_path, capsys, caplog, monkeypatch, smollm):
    caplog.set_level(logging.INFO)
    profile = _saved_profile(tmp_path, _profile(SMOLLM_SKIP, name="smollm2-135m", layers=30,
                                                fingerprint=model_fingerprint(smollm.model)))

    def loaded(name, **options):  # the session's model: the command checks the profile's fingerprint against it
        assert name == "smollm2-135m"
        return smollm

    monkeypatch.setattr(export_draft_cmd, "load_model", loaded)
    draft = tmp_path / "draft"
    assert _run(["export-draft", str(profile), str(draft), "--format", "gguf"]) == 0
    file = draft / "SmolLM2-135M-Instruct.Q4_1-draft.gguf"
    assert str(file) in capsys.readouterr().out
    # gguf-py's writer logs at INFO the file it writes, here the temporary one: kept quiet
    assert [r.getMessage() for r in caplog.records if r.name.startswith("gguf")] == []
    reader = check_draft(file, embedded_model_path("smollm2-135m"), SMOLLM_SKIP, zero_layers=(4, 7, 29))
    fields = {f.name: f.contents() for f in reader.fields.values()}
    assert fields["deci.feed_forward_length"][5] == 0 and fields["deci.attention.head_count"][5] == 0
    assert sum(t.tensor_type == GGMLQuantizationType.Q4_1 for t in reader.tensors) == 210 - 4 * 3 - 4 * 3

    # with --study the draft is re-scored on the study's held-out prompts, its own KV cache against the full model's
    study = tmp_path / "study.yaml"
    study.write_text("name: export-check\nmodel: {name: smollm2-135m}\n"
                     "task: {source: humaneval, search_prompts: 1, heldout_prompts: 2, reference_tokens: 12}\n")
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))
    assert _run(["export-draft", str(profile), str(draft), "--format", "gguf", "--force", "--study", str(study),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "re-scored on 2 held-out prompts of study export-check: drafts of up to " in printed
    assert "x plain decoding with this machine's costs; accepted / drafted " in printed
    readme = (draft / "README.md").read_text()
    assert "## Acceptance, re-scored for this draft" in readme and "(22 positions" in readme
    own_row = next(line for line in readme.splitlines() if line.startswith("| its own KV cache"))
    assert all(0.0 <= float(cell) <= 1.0 for cell in own_row.strip("|").split("|")[1:])

    # a profile of another model (its fingerprint) is refused
    other = _saved_profile(tmp_path, _profile(SMOLLM_SKIP, name="smollm2-135m", layers=30), "other.yaml")
    _fails_with_one_line(["export-draft", str(other), str(tmp_path / "other"), "--format", "gguf"], capsys,
                         "fingerprint expected")


# ---------------------------------------------------------------------------- computing with the draft


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter's q/k row order (`LlamaModel.permute`): its rope rotates adjacent pairs."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _llama_gguf_from(model, path):
    """An HF Llama as llama.cpp's converter writes it in F32: q/k rows permuted, a tied LM head stored once."""
    config = model.config
    weights = {name: tensor.float().numpy() for name, tensor in model.state_dict().items()}
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer = GGUFWriter(path, arch="llama")
    writer.add_uint32("llama.block_count", config.num_hidden_layers)
    writer.add_uint32("llama.context_length", config.max_position_embeddings)
    writer.add_uint32("llama.embedding_length", config.hidden_size)
    writer.add_uint32("llama.feed_forward_length", config.intermediate_size)
    writer.add_uint32("llama.attention.head_count", heads)
    writer.add_uint32("llama.attention.head_count_kv", kv_heads)
    writer.add_float32("llama.rope.freq_base", config.rope_parameters["rope_theta"])
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", config.rms_norm_eps)
    writer.add_uint32("llama.rope.dimension_count", config.head_dim)
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(config.vocab_size)])
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    if not config.tie_word_embeddings:
        writer.add_tensor("output.weight", weights["lm_head.weight"])
    parts = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for layer in range(config.num_hidden_layers):
        for part, hf in parts.items():
            tensor = weights[f"model.layers.{layer}.{hf}.weight"]
            tensor = {"attn_q": lambda w: _permute(w, heads), "attn_k": lambda w: _permute(w, kv_heads)}.get(
                part, lambda w: w)(tensor)
            writer.add_tensor(f"blk.{layer}.{part}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def run_deci(path, tokens: list[int], n_outputs: int) -> np.ndarray:
    """llama.cpp's deci graph (`src/models/deci.cpp`, read 2026-12-04) restated in numpy for an F32 file, its
    flaws included: a layer whose FFN length is 0 `continue`s before the attention output reaches the
    residual stream, and the last layer picks the output rows (the last `n_outputs` tokens) on the FFN path
    only, after which llama.cpp reads the first `n_outputs` rows of the result. Returns those logits."""
    reader = GGUFReader(path)
    fields = {f.name: f.contents() for f in reader.fields.values()}
    weights = {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}
    heads, kv_heads = fields["deci.attention.head_count"], fields["deci.attention.head_count_kv"]
    widths, eps = fields["deci.feed_forward_length"], fields["deci.attention.layer_norm_rms_epsilon"]
    dim, base = fields["deci.attention.key_length"], fields["deci.rope.freq_base"]
    n = len(tokens)
    outputs = list(range(n - n_outputs, n))

    def norm(x, weight):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight

    def rope(x):  # (tokens, heads, dim): rotate adjacent pairs (LLAMA_ROPE_TYPE_NORM)
        angles = np.arange(n)[:, None] * base ** (-np.arange(0, dim, 2) / dim)
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        out = np.empty_like(x)
        out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
        out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
        return out

    hidden = weights["token_embd.weight"][tokens]  # (tokens, embd)
    last = len(heads) - 1
    for layer in range(len(heads)):
        w = {name.split(".")[2]: value for name, value in weights.items() if name.startswith(f"blk.{layer}.")}
        residual = hidden
        cur = hidden if heads[layer] == 0 else norm(hidden, w["attn_norm"])
        if heads[layer] > 0:
            q = rope((cur @ w["attn_q"].T).reshape(n, heads[layer], dim))
            k = rope((cur @ w["attn_k"].T).reshape(n, kv_heads[layer], dim))
            v = (cur @ w["attn_v"].T).reshape(n, kv_heads[layer], dim)
            group = heads[layer] // kv_heads[layer]
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(dim)
            scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            cur = np.einsum("hqk,khd->qhd", probs, v).reshape(n, -1) @ w["attn_output"].T
        if layer == last:
            cur, residual = cur[outputs], residual[outputs]
        if widths[layer] == 0:
            continue
        ffn_in = cur + residual if heads[layer] > 0 else cur
        x = norm(ffn_in, w["ffn_norm"])
        gate = x @ w["ffn_gate"].T
        hidden = (gate / (1 + np.exp(-gate)) * (x @ w["ffn_up"].T)) @ w["ffn_down"].T + ffn_in
    hidden = norm(hidden, weights["output_norm.weight"])[:n_outputs]
    return hidden @ weights.get("output.weight", weights["token_embd.weight"]).T


# layer 1 skips its attention only, 2 its MLP only, 3 both (FFN length 0), 5 (the last) both (zero FFN)
COMPUTE_SKIP = SkipSet(attention=(1, 3, 5), mlp=(2, 3, 5))


@pytest.mark.parametrize("n_outputs", [1, 7], ids=["last token", "every token"])
def test_the_gguf_draft_computes_the_skipped_model(tmp_path, n_outputs):
    model = make_tiny("llama", num_layers=6)
    source = _llama_gguf_from(model, tmp_path / "tiny.gguf")
    tokens = [1, 7, 8, 5, 3, 9, 27]
    whole = write_gguf_draft(source, _profile(SkipSet(), layers=6), str(tmp_path / "whole"))
    full = run_deci(whole.file, tokens, n_outputs)
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0, -n_outputs:].double().numpy()
    assert np.allclose(full, want, atol=1e-4)  # the restated graph computes the model

    written = write_gguf_draft(source, _profile(COMPUTE_SKIP, layers=6), str(tmp_path / "draft"))
    assert written.layers.feed_forward_length == [128, 128, 1, 0, 128, 1]
    with torch.no_grad(), skipping(model, COMPUTE_SKIP):
        want = model(torch.tensor([tokens])).logits[0, -n_outputs:].double().numpy()
    got = run_deci(written.file, tokens, n_outputs)
    assert np.allclose(got, want, atol=1e-4), np.abs(got - want).max()
