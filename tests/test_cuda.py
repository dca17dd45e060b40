"""Checks that need a CUDA GPU; `make gpu-check` runs them on a machine that has one.

They import only what the engine needs (torch, transformers, accelerate), so they run where
skipsearch's other dependencies are not installed. Without a GPU each test skips and says why.
"""

import random

import pytest
import torch

from skipsearch.engine.costs import layer_groups, measure_costs
from skipsearch.engine.decoding import DecodeSettings, decode
from skipsearch.engine.drafting import PolicySettings
from skipsearch.engine.lossless import LosslessCounts, classify
from skipsearch.engine.skipping import SkipSet
from skipsearch.engine.timing import Stopwatch

from conftest import generate_greedy, make_tiny_llama, random_skip_sets

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def test_greedy_is_identical_to_generate_in_float32_on_the_gpu():
    model = make_tiny_llama().cuda()
    rng = random.Random(0)
    for _ in range(3):
        prompt = [rng.randrange(3, 128) for _ in range(rng.randint(2, 12))]
        expected = generate_greedy(model, prompt, 16)
        for skip_set in random_skip_sets(4, 8, seed=len(prompt)):
            settings = DecodeSettings(max_new_tokens=16, max_draft_tokens=4, confidence_threshold=0.0, fallback=False)
            assert decode(model, prompt, skip_set, settings).token_ids == expected, skip_set


def test_bfloat16_outputs_differ_only_by_tie_flips():
    model = make_tiny_llama().to("cuda", torch.bfloat16)
    counts = LosslessCounts()
    rng = random.Random(1)
    for _ in range(4):
        prompt = [rng.randrange(3, 128) for _ in range(8)]
        plain = decode(model, prompt, None, DecodeSettings(max_new_tokens=24, fallback=False)).token_ids
        for skip_set in random_skip_sets(4, 4, seed=rng.randrange(1000)):
            drafted = decode(model, prompt, skip_set, DecodeSettings(max_new_tokens=24, max_draft_tokens=6,
                                                                     confidence_threshold=0.0, fallback=False))
            counts.add(classify(model, prompt, plain, drafted.token_ids, verify_tokens=7))
    assert counts.error == 0, counts.describe()


def test_cuda_events_time_what_a_synchronised_clock_times():
    device = torch.device("cuda")
    a = torch.randn(2048, 2048, device=device)

    def work():
        for _ in range(20):
            a @ a

    work()
    with Stopwatch([device], events=True) as events:
        work()
    with Stopwatch([device], events=False) as clock:
        work()
    assert 0.5 < events.seconds / clock.seconds < 2.0


def test_at_most_one_host_transfer_per_pass_on_the_gpu(monkeypatch):
    model = make_tiny_llama().cuda()
    counted = {"n": 0}
    for name in ("item", "tolist", "__int__", "__float__", "__bool__", "cpu"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            counted["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    settings = DecodeSettings(max_new_tokens=24, max_draft_tokens=4, confidence_threshold=0.005, fallback=False,
                              policy=PolicySettings(layer_skip_prior=0.9))  # so that the skip set drafts
    stats = decode(model, [5, 17, 33, 9, 41], SkipSet(attention=(2,), mlp=(3,)), settings).stats
    assert stats.draft_steps > 0
    assert counted["n"] <= 1 + stats.draft_steps + stats.rounds + stats.plain_steps


@pytest.mark.parametrize("first, last", [(0, "cpu"), ("cpu", 0)])
def test_sampling_on_a_model_split_between_the_gpu_and_the_host(first, last):
    """Input ids on one device, logits on the other: every draw uses a generator where the logits are."""
    from accelerate import dispatch_model

    device_map = {"model.embed_tokens": first, "model.rotary_emb": first, "model.layers.0": first,
                  "model.layers.1": first, "model.layers.2": last, "model.layers.3": last, "model.norm": last,
                  "lm_head": last}
    # main_device "cpu": the "cpu" modules run on the host instead of being offloaded to the GPU
    model = dispatch_model(make_tiny_llama(), device_map=device_map, main_device="cpu")
    settings = DecodeSettings(max_new_tokens=16, max_draft_tokens=3, temperature=1.0, top_k=8, seed=3,
                              confidence_threshold=0.0, fallback=False)
    result = decode(model, [5, 6, 5, 6, 5], SkipSet(attention=(1,)), settings)
    assert result.stats.rounds > 0
    assert decode(model, [5, 6, 5, 6, 5], SkipSet(attention=(1,)), settings).token_ids == result.token_ids


def test_decoding_without_a_guard_never_synchronises_the_gpu(monkeypatch):
    """Rounds are marked with events read once after the loop: no device-wide wait inside it."""
    model = make_tiny_llama().cuda()
    synchronized = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: (synchronized.append(device), real(device)))
    settings = DecodeSettings(max_new_tokens=24, max_draft_tokens=4, confidence_threshold=0.0, costs=None,
                              fallback=False)
    stats = decode(model, [5, 17, 33, 9, 41], SkipSet(attention=(2,), mlp=(3,)), settings).stats
    assert synchronized == []
    assert stats.rounds > 0 and stats.verify_time_s > 0 and stats.total_time_s >= stats.verify_time_s


def test_auto_dtype_is_bfloat16_on_a_gpu_that_supports_it():
    from skipsearch.engine.models import resolve_dtype

    expected = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    assert resolve_dtype("auto", on_cuda=True) == expected


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs to shard a model")
def test_a_model_sharded_over_two_gpus_decodes_losslessly_and_is_costed_per_gpu():
    from accelerate import dispatch_model

    plain = make_tiny_llama().cuda()
    model = make_tiny_llama()
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 0,
                  "model.layers.2": 1, "model.layers.3": 1, "model.norm": 1, "lm_head": 1}
    model = dispatch_model(model, device_map=device_map)
    assert layer_groups(model) == [(0, 1), (2, 3)]
    prompt = [5, 17, 33, 9, 41, 3]
    expected = generate_greedy(plain, prompt, 12)
    for skip_set in random_skip_sets(4, 6, seed=3):
        settings = DecodeSettings(max_new_tokens=12, max_draft_tokens=3, confidence_threshold=0.0, fallback=False)
        assert decode(model, prompt, skip_set, settings).token_ids == expected, skip_set
    costs = measure_costs(model, context_tokens=16, max_verify_tokens=3, repeats=2)
    assert costs.attention[0] == costs.attention[1] and costs.attention[2] == costs.attention[3]


def test_flash_attention_2_decodes_what_sdpa_decodes():
    pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    from transformers import LlamaForCausalLM

    reference = make_tiny_llama().to("cuda", torch.bfloat16)
    model = LlamaForCausalLM._from_config(reference.config, attn_implementation="flash_attention_2",
                                          dtype=torch.bfloat16).cuda().eval()
    model.load_state_dict(reference.state_dict())
    prompt = list(range(5, 40))
    plain = decode(reference, prompt, None, DecodeSettings(max_new_tokens=16, fallback=False)).token_ids
    drafted = decode(model, prompt, SkipSet(mlp=(2,)), DecodeSettings(max_new_tokens=16, max_draft_tokens=4,
                                                                      confidence_threshold=0.0, fallback=False))
    assert classify(reference, prompt, plain, drafted.token_ids).kind != "error"
