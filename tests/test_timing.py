"""The one timer: waits only for the devices it is given, and marks inside a loop without waiting.

CUDA calls are replaced by recorders, so the GPU paths are checked on any machine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from skipsearch.engine import forward, timing
from skipsearch.engine.timing import Stopwatch, Timeline

from conftest import make_tiny_llama

CPU, GPU0, GPU1 = torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda", 1)


class FakeEvent:
    """A CUDA event stand-in: recorded at a time the test sets, waited for when read."""

    def __init__(self, at: float, waits: list):
        self.at, self.waits = at, waits

    def synchronize(self):
        self.waits.append(self)

    def elapsed_time(self, end: "FakeEvent") -> float:
        return (end.at - self.at) * 1000  # milliseconds, as CUDA gives them


@pytest.fixture
def gpus(monkeypatch):
    """Four visible GPUs that record what is waited for; events at times from `clock["t"]`."""
    state = {"synchronized": [], "waits": [], "t": 0.0}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: state["synchronized"].append(device))
    monkeypatch.setattr(timing, "_recorded", lambda gpu: FakeEvent(state["t"] * (1 + gpu.index), state["waits"]))
    return state


def test_synchronize_waits_for_the_given_gpus_only(gpus):
    timing.synchronize([GPU1, CPU, GPU1])
    assert gpus["synchronized"] == [GPU1]  # not the other three visible GPUs
    timing.synchronize([CPU])
    assert gpus["synchronized"] == [GPU1]


def test_a_timeline_marks_without_waiting_and_reads_the_slowest_gpu_after(gpus):
    timeline = Timeline([GPU0, GPU1, CPU])
    start = timeline.mark()
    gpus["t"] = 2.0
    end = timeline.mark()
    assert gpus["synchronized"] == [] and gpus["waits"] == []
    timeline.now()
    assert gpus["synchronized"] == [GPU0, GPU1]
    # each GPU's span from its own events (they compare only within one device): the longest counts
    assert timeline.seconds(start, end) == pytest.approx(4.0)
    assert gpus["waits"] == end


def test_on_the_host_a_timeline_reads_the_clock_and_never_waits(gpus):
    timeline = Timeline([CPU])
    start = timeline.mark()
    end = timeline.mark()
    timeline.now()
    assert isinstance(start, float) and timeline.seconds(start, end) >= 0.0
    assert gpus["synchronized"] == []


def test_a_stopwatch_uses_events_on_one_gpu_and_a_synchronised_clock_on_several(gpus):
    assert Stopwatch([GPU1, CPU]).events and not Stopwatch([GPU0, GPU1]).events and not Stopwatch([CPU]).events
    with Stopwatch([GPU0, GPU1]):
        pass
    assert gpus["synchronized"] == [GPU0, GPU1] * 2


def test_a_model_s_devices_include_where_offloaded_weights_compute(tmp_path):
    from accelerate import dispatch_model

    assert forward.model_devices(make_tiny_llama()) == {CPU}
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": "disk" for i in range(4)})
    model = dispatch_model(make_tiny_llama(), device_map=device_map, offload_dir=str(tmp_path))
    assert any(p.device.type == "meta" for p in model.parameters())  # the offloaded weights
    assert forward.model_devices(model) == {CPU}
    # hooks that execute elsewhere than their weights sit, alone or in a SequentialHook
    model.model.layers[0]._hf_hook = SimpleNamespace(execution_device=GPU1)
    model.model.layers[1]._hf_hook = SimpleNamespace(hooks=(SimpleNamespace(execution_device="cuda:0"),))
    assert forward.model_devices(model) == {CPU, GPU0, GPU1}
