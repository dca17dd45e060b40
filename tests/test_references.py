"""Reference continuations are cached per model fingerprint and per the numerics the model runs in."""

from __future__ import annotations

import torch

from skipsearch.engine.models import model_fingerprint
from skipsearch.search import references

from conftest import make_tiny_llama


def test_the_cache_is_keyed_by_dtype_and_attention_implementation(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path))
    decoded = []
    real_decode = references.decode

    def counting_decode(model, *args, **kwargs):
        decoded.append((model.dtype, model.config._attn_implementation))
        return real_decode(model, *args, **kwargs)

    monkeypatch.setattr(references, "decode", counting_decode)
    model = make_tiny_llama()
    fingerprint = model_fingerprint(model)  # the same in bfloat16: it cannot tell the runs apart by itself
    prompts = [("p0", [1, 7, 8])]

    def continuation():
        return references.reference_continuations(model, fingerprint, "toy", prompts, 6)[0].continuation

    first = continuation()
    assert continuation() == first and len(decoded) == 1  # cached
    model.set_attn_implementation("eager")
    continuation()
    model.to(torch.bfloat16)
    continuation()
    continuation()
    assert decoded == [(torch.float32, "sdpa"), (torch.float32, "eager"), (torch.bfloat16, "eager")]
    assert len(list((tmp_path / "references").glob("*.json"))) == 3
