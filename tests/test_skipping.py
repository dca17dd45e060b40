import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from skipsearch import SkipsearchError, SkipSet, eligible_sublayers, skipping
from skipsearch.engine.forward import cache_keyword
from skipsearch.engine.skipping import param_name

from conftest import BLOCK_ATTRIBUTES, assert_blocks_run_through_hooks, hook_blocks


def _hidden_states(model, ids):
    return model(ids, output_hidden_states=True).hidden_states


def test_empty_skip_set_gives_identical_logits(tiny_model):
    ids = torch.randint(0, 128, (1, 12))
    expected = tiny_model(ids).logits
    with skipping(tiny_model, SkipSet()):
        assert torch.equal(tiny_model(ids).logits, expected)


@pytest.mark.parametrize("kind", ["attention", "mlp"])
@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_skipping_a_block_changes_only_what_follows(tiny_model, kind, layer):
    ids = torch.randint(0, 128, (1, 10))
    full = _hidden_states(tiny_model, ids)
    with skipping(tiny_model, SkipSet(**{kind: (layer,)})):
        skipped = _hidden_states(tiny_model, ids)
    # hidden_states[i] is the input of layer i
    for i in range(layer + 1):
        assert torch.equal(skipped[i], full[i])
    assert not torch.allclose(skipped[-1], full[-1])


def test_skipped_attention_writes_no_cache(tiny_model):
    from transformers import DynamicCache

    cache = DynamicCache()
    with skipping(tiny_model, SkipSet(attention=(2,))):
        tiny_model(torch.randint(0, 128, (1, 6)), **{cache_keyword(tiny_model): cache}, use_cache=True)
    assert [layer.get_seq_length() for layer in cache.layers] == [6, 6, 0, 6]


def test_skipping_both_blocks_is_the_identity_layer(tiny_model):
    ids = torch.randint(0, 128, (1, 8))
    with skipping(tiny_model, SkipSet(attention=(1,), mlp=(1,))):
        hidden = _hidden_states(tiny_model, ids)
    assert torch.equal(hidden[1], hidden[2])


def test_model_restored_after_exception(tiny_model):
    ids = torch.randint(0, 128, (1, 8))
    expected = tiny_model(ids).logits
    calls = hook_blocks(tiny_model)
    with pytest.raises(RuntimeError):
        with skipping(tiny_model, SkipSet(attention=(1, 2), mlp=(3,))):
            raise RuntimeError("boom")
    assert_blocks_run_through_hooks(tiny_model, calls)
    assert torch.equal(tiny_model(ids).logits, expected)


def test_out_of_range_skip_set_is_refused_before_patching(tiny_model):
    with pytest.raises(SkipsearchError, match="out of range"):
        with skipping(tiny_model, SkipSet(mlp=(3, 4))):
            pass
    # nothing was installed: not even on layer 3's blocks, which are in range
    assert not any("forward" in vars(getattr(layer, attribute))
                   for layer in tiny_model.model.layers for attribute in BLOCK_ATTRIBUTES)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"attention": (-1,)}, ">= 0"),
        ({"mlp": (2, 2)}, "duplicate"),
        ({"attention": (1.5,)}, "integers"),
        ({"attention": (True,)}, "integers"),
    ],
)
def test_bad_skip_sets(kwargs, message):
    with pytest.raises(SkipsearchError, match=message):
        SkipSet(**kwargs)


def test_skip_set_is_sorted_and_round_trips_sublayers():
    skip = SkipSet(attention=(5, 3), mlp=(7,))
    assert skip.attention == (3, 5)
    assert SkipSet.from_sublayers(skip.sublayers) == skip
    assert len(skip) == 3 and skip.first_layer == 3


def test_eligible_sublayers_exclude_first_and_last_by_default():
    eligible = eligible_sublayers(30)
    assert len(eligible) == 56
    assert ("attention", 0) not in eligible and ("mlp", 29) not in eligible
    assert len(eligible_sublayers(30, keep_first=0, keep_last=0)) == 60
    with pytest.raises(SkipsearchError):
        eligible_sublayers(2)


def test_unsupported_architecture_is_one_line():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(SkipsearchError, match="supports llama, mistral, qwen2, qwen3"):
        with skipping(model, SkipSet()):
            pass


def _offload(model, how: str, folder):
    from accelerate import cpu_offload, dispatch_model

    if how == "cpu_offload":
        return cpu_offload(model, execution_device="cpu")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": ("disk" if i % 2 else "cpu") for i in range(4)})
    return dispatch_model(model, device_map=device_map, offload_dir=str(folder))


@pytest.mark.parametrize("how", ["cpu_offload", "dispatch with disk offload"])
def test_skipping_composes_with_accelerate_offloading(tmp_path, how):
    """Greedy identity against generate with offloaded layers, and accelerate's hooks still in
    place and still running afterwards (weights of offloaded layers live on the meta device,
    so a lost hook would fail loudly)."""
    import random

    from skipsearch.engine.decoding import DecodeSettings, decode

    from conftest import make_tiny_llama

    plain = make_tiny_llama()
    model = _offload(make_tiny_llama(), how, tmp_path)
    hooked = {name: module._hf_hook for name, module in model.named_modules() if hasattr(module, "_hf_hook")}
    assert any(p.device.type == "meta" for p in model.parameters())
    rng = random.Random(0)
    prompt = [rng.randrange(3, 128) for _ in range(9)]
    expected = plain.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10)[0, 9:].tolist()
    for skip_set in (SkipSet(attention=(1,)), SkipSet(attention=(0, 3), mlp=(1, 2)), SkipSet(mlp=(3,))):
        settings = DecodeSettings(max_new_tokens=10, max_draft_tokens=3, confidence_threshold=0.0, fallback=False)
        assert decode(model, prompt, skip_set, settings).token_ids == expected, skip_set

    assert {name: module._hf_hook for name, module in model.named_modules()
            if hasattr(module, "_hf_hook")} == hooked
    ran = []
    for name, hook in hooked.items():
        original = hook.pre_forward
        hook.pre_forward = lambda module, *args, _name=name, _original=original, **kwargs: (
            ran.append(_name) or _original(module, *args, **kwargs))
    after = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10)[0, 9:].tolist()
    assert after == expected
    assert set(ran) >= {name for name in hooked if name}  # every hook but the top model's own still runs


def test_the_proxy_scores_an_offloaded_model_as_the_plain_one(tmp_path):
    """The proxy calls decoder layers, the final norm and the LM head directly: through
    accelerate's hooks, which bring offloaded weights in, as the model's own forward does."""
    from skipsearch.search.references import Reference
    from skipsearch.search.scoring import ProxyScorer

    from conftest import generate_greedy, make_tiny_llama, random_skip_sets

    plain = make_tiny_llama()
    offloaded = _offload(make_tiny_llama(), "dispatch with disk offload", tmp_path)
    prompts = [[5, 17, 33, 9], [40, 41, 42, 43, 44, 45]]
    references = [Reference(str(i), tuple(p), tuple(generate_greedy(plain, p, 8))) for i, p in enumerate(prompts)]
    expected, got = ProxyScorer(plain, references), ProxyScorer(offloaded, references)
    for skip_set in random_skip_sets(4, 5, seed=2):
        assert got.score(skip_set) == expected.score(skip_set), skip_set


_ELIGIBLE = eligible_sublayers(12)


@given(st.sets(st.sampled_from(_ELIGIBLE), max_size=len(_ELIGIBLE)))
def test_every_encoding_reads_back_the_same_skip_set(sublayers):
    skip_set = SkipSet.from_sublayers(sorted(sublayers))
    assert SkipSet.from_dict(skip_set.to_dict()) == skip_set
    assert SkipSet.from_attrs(skip_set.to_attrs()) == skip_set
    params = skip_set.to_params(_ELIGIBLE)
    assert list(params) == [param_name(s) for s in _ELIGIBLE]
    assert SkipSet.from_params(params, _ELIGIBLE, k=None) == skip_set
    assert SkipSet.from_params(params, _ELIGIBLE, k=len(skip_set)) == skip_set
    assert len({skip_set, SkipSet.from_attrs(skip_set.to_attrs())}) == 1  # the set is its own key


def test_from_params_breaks_ties_by_the_order_of_the_eligible_sublayers():
    params = {param_name(s): 0.5 for s in _ELIGIBLE}
    assert SkipSet.from_params(params, _ELIGIBLE, k=2).sublayers == list(_ELIGIBLE[:2])


def test_a_trial_without_skip_attributes_skips_nothing():
    assert SkipSet.from_attrs({}) == SkipSet()
    assert SkipSet(attention=(3, 1), mlp=()).describe() == "attention[1,3] mlp[-]"


@pytest.mark.slow  # many decodes on two threads
def test_a_thread_drafting_leaves_another_threads_plain_generate_alone():
    """Serving code shares one model between request threads: skipping in one must not reach another."""
    import sys
    import threading

    from conftest import generate_greedy, make_tiny_llama

    model = make_tiny_llama(seed=5)
    prompt = [1, 17, 42, 9, 77]
    expected = generate_greedy(model, prompt, 16)
    skip_set = SkipSet(attention=(1, 2), mlp=(1, 2, 3))
    with skipping(model, skip_set):
        assert generate_greedy(model, prompt, 16) != expected  # the skip set does change the output
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so that the two interleave within each call
    try:
        stop, drafted, errors = threading.Event(), [], []

        def draft():
            try:
                ids = torch.tensor([prompt])
                while not stop.is_set():
                    with skipping(model, skip_set), torch.inference_mode():
                        model(ids)
                    drafted.append(1)
            except Exception as error:  # surfaced below: a thread's exception would be lost
                errors.append(error)

        drafter = threading.Thread(target=draft)
        drafter.start()
        try:
            outputs = [generate_greedy(model, prompt, 16) for _ in range(12)]
        finally:
            stop.set()
            drafter.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors
    assert len(drafted) > 12  # the drafter ran throughout
    assert outputs == [expected] * 12


def test_nested_skipping_skips_the_union_and_restores_the_outer_set(tiny_model):
    ids = torch.randint(0, 128, (1, 8))
    with skipping(tiny_model, SkipSet(attention=(1,))):
        outer = tiny_model(ids).logits
        with skipping(tiny_model, SkipSet(mlp=(2,))):
            inner = tiny_model(ids).logits
        assert torch.equal(tiny_model(ids).logits, outer)
    with skipping(tiny_model, SkipSet(attention=(1,), mlp=(2,))):
        assert torch.equal(tiny_model(ids).logits, inner)
