import pytest
import torch

from skipsearch import SkipSet, SkipsearchError, eligible_sublayers, skipping


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
        tiny_model(torch.randint(0, 128, (1, 6)), past_key_values=cache, use_cache=True)
    assert [layer.get_seq_length() for layer in cache.layers] == [6, 6, 0, 6]


def test_skipping_both_blocks_is_the_identity_layer(tiny_model):
    ids = torch.randint(0, 128, (1, 8))
    with skipping(tiny_model, SkipSet(attention=(1,), mlp=(1,))):
        hidden = _hidden_states(tiny_model, ids)
    assert torch.equal(hidden[1], hidden[2])


def test_model_restored_after_exception(tiny_model):
    ids = torch.randint(0, 128, (1, 8))
    expected = tiny_model(ids).logits
    with pytest.raises(RuntimeError):
        with skipping(tiny_model, SkipSet(attention=(1, 2), mlp=(3,))):
            raise RuntimeError("boom")
    assert all("forward" not in vars(layer) for layer in tiny_model.model.layers)
    assert torch.equal(tiny_model(ids).logits, expected)


def test_out_of_range_skip_set_is_refused_before_patching(tiny_model):
    with pytest.raises(SkipsearchError, match="out of range"):
        with skipping(tiny_model, SkipSet(mlp=(4,))):
            pass
    assert all("forward" not in vars(layer) for layer in tiny_model.model.layers)


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
