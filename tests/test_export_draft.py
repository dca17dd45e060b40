"""`skipsearch export-draft`: the skipped model as a DeciLM / Nemotron-NAS checkpoint
(`skipsearch.config.draft_export`), read back by a small reader written here from what vLLM's and SGLang's
`DeciLMForCausalLM` do with `block_configs`, and compared with the source model under the skip set."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

from skipsearch.cli import main
from skipsearch.config.draft_export import block_configs, draft_config, ffn_mult
from skipsearch.config.profiles import DraftSettings, Profile, ProfileModel, save_profile
from skipsearch.engine.models import model_fingerprint
from skipsearch.engine.skipping import SkipSet, skipping
from skipsearch.errors import SkipsearchError
from skipsearch.files import write_folder_atomic

from conftest import make_tiny, make_tokenizer

SKIP = SkipSet(attention=(1, 2), mlp=(2, 3))
PROMPTS = [[1, 7, 8, 5], [1, 3, 9, 27, 81, 2, 11], list(range(1, 40))]


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _tiny_llama(intermediate_size: int = 256, tied: bool = False) -> LlamaForCausalLM:
    """A Llama whose FFN width DeciLM's ffn_mult can state (a multiple of 256)."""
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=intermediate_size, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def _saved(tmp_path, model, skip: SkipSet = SKIP):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    profile = tmp_path / "profile.yaml"
    save_profile(Profile(model=ProfileModel(str(folder), model.config.model_type, 4, model_fingerprint(model)),
                         task="toy", skip=skip, draft=DraftSettings(max_draft_tokens=5, confidence_threshold=0.8)),
                 profile)
    return folder, profile


def _engine_width(mult: float, hidden: int) -> int:
    """vLLM's and SGLang's `_ffn_mult_to_intermediate_size`, restated."""
    width = int(2 * mult * hidden / 3)
    return width + -width % 256


def read_draft(folder):
    """Rebuild the draft as the engines would: a Llama of the config, the exported tensors, no_op blocks
    left out (here: skipped with skipsearch's own bypass on the rebuilt model)."""
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["model_type"] == "nemotron-nas"
    blocks = config.pop("block_configs")
    for key in ("architectures", "model_type", "auto_map"):
        config.pop(key)
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    skip = SkipSet(attention=tuple(i for i, b in enumerate(blocks) if b["attention"]["no_op"]),
                   mlp=tuple(i for i, b in enumerate(blocks) if b["ffn"]["no_op"]))
    for block in blocks:
        if not block["ffn"]["no_op"]:
            assert _engine_width(block["ffn"]["ffn_mult"], config["hidden_size"]) == config["intermediate_size"]
        if not block["attention"]["no_op"]:
            heads = config["num_attention_heads"] // block["attention"]["n_heads_in_group"]
            assert heads == config["num_key_value_heads"]
    missing, unexpected = model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
    assert unexpected == []
    if config["tie_word_embeddings"]:  # stored once, as the embeddings
        model.tie_weights()
        missing = [name for name in missing if name != "lm_head.weight"]
    # exactly the no_op blocks' weights are absent, their norms included (the engines build none of them)
    expected = {name for name in model.state_dict()
                if any(name.startswith(f"model.layers.{i}.{part}.") for i in skip.attention
                       for part in ("self_attn", "input_layernorm"))
                or any(name.startswith(f"model.layers.{i}.{part}.") for i in skip.mlp
                       for part in ("mlp", "post_attention_layernorm"))}
    assert set(missing) == expected and expected
    return model, skip


@pytest.mark.parametrize("tied", [False, True], ids=["own LM head", "tied LM head"])
def test_the_exported_draft_computes_the_skipped_model_exactly(tmp_path, capsys, tied):
    source = _tiny_llama(tied=tied)
    folder, profile = _saved(tmp_path, source)
    draft = tmp_path / "draft"
    assert _run(["export-draft", str(profile), str(draft)]) == 0
    assert "left out" in capsys.readouterr().out

    rebuilt, skip = read_draft(draft)
    assert skip == SKIP
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        with torch.no_grad(), skipping(source, SKIP):
            want = source(ids).logits
        with torch.no_grad(), skipping(rebuilt, skip):
            got = rebuilt(ids).logits
        assert torch.equal(want, got)


def test_the_folder_loads_through_its_own_config_class(tmp_path):
    """What `--trust-remote-code` does in the engines: auto_map names configuration_decilm.DeciLMConfig,
    whose block_configs read with attribute access."""
    folder, profile = _saved(tmp_path, _tiny_llama())
    draft = tmp_path / "draft"
    assert _run(["export-draft", str(profile), str(draft)]) == 0
    config = AutoConfig.from_pretrained(draft, trust_remote_code=True)
    assert type(config).__name__ == "DeciLMConfig" and config.model_type == "nemotron-nas"
    assert [b.attention.no_op for b in config.block_configs] == [False, True, True, False]
    assert [b.ffn.no_op for b in config.block_configs] == [False, False, True, True]
    assert config.block_configs[0].attention.n_heads_in_group == 2 and config.block_configs[0].ffn.ffn_mult == 6.0
    assert config.to_dict()["block_configs"] == json.loads((draft / "config.json").read_text())["block_configs"]
    assert (draft / "tokenizer.json").exists()
    readme = (draft / "README.md").read_text()
    assert f'"model": "{draft}"' in readme and '"num_speculative_tokens": 5' in readme and '"draft_model"' in readme


def test_the_readme_states_the_memory_of_the_kept_weights(tmp_path):
    source = _tiny_llama()
    folder, profile = _saved(tmp_path, source)
    draft = tmp_path / "draft"
    assert _run(["export-draft", str(profile), str(draft)]) == 0
    kept = sum(t.numel() * t.element_size() for t in load_file(draft / "model.safetensors").values())
    per_token = 2 * 2 * 2 * 16 * 4  # 2 kept attention layers, K and V, 2 KV heads of 16, float32
    readme = (draft / "README.md").read_text()
    assert f"| {kept} (" in readme and f"| {per_token} (" in readme


def test_a_rescored_draft_states_its_engine_settings_and_whether_it_pays(tmp_path):
    from skipsearch.config.draft_export import DraftAcceptance, write_draft

    source = _tiny_llama()
    profile = Profile(model=ProfileModel("tiny", "llama", 4, model_fingerprint(source)), task="toy", skip=SKIP,
                      draft=DraftSettings(max_draft_tokens=5, confidence_threshold=0.8))
    slow = DraftAcceptance(prompts="3 held-out prompts of study toy", positions=90, draft_tokens=2, p_min=0.5,
                           own_matchness=0.41, shared_matchness=0.52, own_acceptance=0.3, shared_acceptance=0.4,
                           own_tokens_per_round=1.6, predicted_speedup=0.7)
    write_draft(source, make_tokenizer(), profile, str(tmp_path / "slow"), acceptance=slow)
    readme = (tmp_path / "slow" / "README.md").read_text()
    # the engine's settings are the chosen ones, not the profile's
    assert '"num_speculative_tokens": 2' in readme and "--speculative-num-steps 2" in readme
    assert "| its own KV cache: this exported draft in an engine | 0.410 | 0.300 |" in readme
    assert "predicted 0.70x plain decoding there" in readme and "The draft is not predicted to pay" in readme
    fast = dataclasses.replace(slow, predicted_speedup=1.3)
    write_draft(source, make_tokenizer(), profile, str(tmp_path / "fast"), acceptance=fast)
    assert "not predicted to pay" not in (tmp_path / "fast" / "README.md").read_text()
    write_draft(source, make_tokenizer(), profile, str(tmp_path / "plain"))
    unscored = (tmp_path / "plain" / "README.md").read_text()
    assert '"num_speculative_tokens": 5' in unscored and "--study STUDY.yaml" in unscored


def test_block_configs_follow_the_skip_set():
    config = _tiny_llama().config
    blocks = block_configs(config, SkipSet(attention=(0,), mlp=(3,)))
    assert [b["attention"]["no_op"] for b in blocks] == [True, False, False, False]
    assert [b["ffn"]["no_op"] for b in blocks] == [False, False, False, True]
    assert blocks[0]["attention"]["n_heads_in_group"] is None and blocks[3]["ffn"]["ffn_mult"] is None


@pytest.mark.parametrize("width", [11008, 14336, 8192, 1536])  # Llama-2-7B, Llama-3-8B, Llama-3.2-1B, SmolLM2-135M
def test_ffn_mult_states_real_widths_exactly(width):
    hidden = {11008: 4096, 14336: 4096, 8192: 2048, 1536: 576}[width]
    assert _engine_width(ffn_mult(width, hidden), hidden) == width


def test_a_width_ffn_mult_cannot_state_is_refused():
    with pytest.raises(SkipsearchError, match="intermediate_size 128 is not a multiple of 256"):
        ffn_mult(128, 64)


def _fails_with_one_line(argv, capsys, message):
    capsys.readouterr()  # what saving the source model printed
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_non_llama_family_fails_with_one_line_and_writes_nothing(tmp_path, capsys):
    folder, profile = _saved(tmp_path, make_tiny("qwen3"))
    draft = tmp_path / "draft"
    _fails_with_one_line(["export-draft", str(profile), str(draft)], capsys, "Llama-family models only")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "profile.yaml"]


def test_an_unstatable_ffn_width_fails_with_one_line(tmp_path, capsys):
    folder, profile = _saved(tmp_path, _tiny_llama(intermediate_size=128))
    _fails_with_one_line(["export-draft", str(profile), str(tmp_path / "draft")], capsys, "not a multiple of 256")
    assert not (tmp_path / "draft").exists()


@pytest.mark.parametrize("skip, message", [
    (SkipSet(attention=(0, 1, 2, 3)), "skips every attention block"),
    (SkipSet(attention=(0,)), "keeps the MLP of layer 0 but no attention block before it"),
])
def test_a_skip_set_the_engines_cannot_run_fails_with_one_line(tmp_path, capsys, skip, message):
    folder, profile = _saved(tmp_path, _tiny_llama(), skip)
    _fails_with_one_line(["export-draft", str(profile), str(tmp_path / "draft")], capsys, message)
    assert not (tmp_path / "draft").exists()


def test_a_first_layer_without_attention_or_mlp_is_fine():
    blocks = draft_config(_tiny_llama(), SkipSet(attention=(0,), mlp=(0,)))["block_configs"]
    assert blocks[0]["attention"]["no_op"] and blocks[0]["ffn"]["no_op"]


def test_a_non_empty_folder_is_refused_unless_forced(tmp_path, capsys):
    folder, profile = _saved(tmp_path, _tiny_llama())
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "old.txt").write_text("keep me")
    _fails_with_one_line(["export-draft", str(profile), str(draft)], capsys, "is not empty")
    assert [p.name for p in draft.iterdir()] == ["old.txt"]
    _fails_with_one_line(["export-draft", str(profile), str(folder), "--force"], capsys, "the model's own folder")
    assert _run(["export-draft", str(profile), str(draft), "--force"]) == 0
    assert not (draft / "old.txt").exists() and (draft / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["draft", "model", "profile.yaml"]  # no temporary left


def test_a_failed_folder_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "draft"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def half(folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt  # as an interrupt halfway through would

    with pytest.raises(KeyboardInterrupt):
        write_folder_atomic(target, half)
    assert [p.name for p in tmp_path.iterdir()] == ["draft"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    write_folder_atomic(target, lambda folder: (folder / "new.txt").write_text("new"))
    assert [p.name for p in target.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["draft"]
