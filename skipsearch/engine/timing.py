"""Timing device work, the one way skipsearch does it: CUDA events on the model's GPUs, a
synchronised perf_counter where events cannot serve; and the one median of repeated timings.

A CUDA kernel launch returns before the kernel ran, so a host clock read without a sync
measures launches, not work. Events recorded on a GPU's stream time the work itself without
stalling the host; they compare only within one device. Every wait here is for the devices it is
given — a model's (`forward.model_devices`) — never for every visible GPU: that would stall on
other work and create a CUDA context on each.

This module knows nothing about models; it imports torch only.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Iterable

import torch


def _gpus(devices: Iterable[torch.device]) -> list[torch.device]:
    return sorted({device for device in devices if device.type == "cuda"}, key=str)


def synchronize(devices: Iterable[torch.device]) -> None:
    """Wait for the GPUs among `devices` (a model spread over several finishes on its last)."""
    for gpu in _gpus(devices):
        torch.cuda.synchronize(gpu)


def device_time(devices: Iterable[torch.device]) -> float:
    """A host clock read once `devices` have finished their queued work: the difference of two
    reads times the work between them."""
    synchronize(devices)
    return time.perf_counter()


def median(seconds: Iterable[float]) -> float:
    """The median of repeated timings (the mean of the two middle ones for an even count)."""
    return statistics.median(seconds)


def _recorded(gpu: torch.device) -> torch.cuda.Event:
    event = torch.cuda.Event(enable_timing=True)
    event.record(torch.cuda.current_stream(gpu))
    return event


class Stopwatch:
    """`with Stopwatch(devices) as watch: ...` then `watch.seconds`, `devices` being the model's."""

    def __init__(self, devices: Iterable[torch.device], events: bool | None = None):
        self.devices = tuple(devices)
        gpus = _gpus(self.devices)
        # events by default where one GPU does all the device work
        self.events = len(gpus) == 1 if events is None else events
        self._gpu = gpus[0] if gpus else None
        self.seconds = 0.0

    def __enter__(self) -> "Stopwatch":
        if self.events:
            self._start = _recorded(self._gpu)
        else:
            self._started = device_time(self.devices)
        return self

    def __exit__(self, *exc) -> None:
        if self.events:
            end = _recorded(self._gpu)
            end.synchronize()
            self.seconds = self._start.elapsed_time(end) / 1000
        else:
            self.seconds = device_time(self.devices) - self._started


class Timeline:
    """Points in time taken inside a loop without waiting for `devices` (a model's), read after it.

    `mark()` records a CUDA event on each of the GPUs (on the host alone, whose work is done when
    a call returns, it reads the clock); `seconds(start, end)` waits for `end` once and gives the
    longest span over the GPUs. `now()` is the one reading that waits: for a decision taken inside
    the loop."""

    def __init__(self, devices: Iterable[torch.device]):
        self.devices = tuple(devices)
        self._gpus = _gpus(self.devices)

    def mark(self) -> Any:
        if not self._gpus:
            return time.perf_counter()
        return [_recorded(gpu) for gpu in self._gpus]

    def now(self) -> float:
        return device_time(self.devices)

    def seconds(self, start: Any, end: Any) -> float:
        if not self._gpus:
            return end - start
        for event in end:
            event.synchronize()
        # a GPU idle at both marks spans the time between them too; the busiest one spans the work
        return max(first.elapsed_time(last) for first, last in zip(start, end)) / 1000
