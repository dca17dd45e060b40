"""Timing device work, the one way skipsearch does it: CUDA events on one GPU, a synchronised
perf_counter elsewhere; and the one median of repeated timings.

A CUDA kernel launch returns before the kernel ran, so a host clock read without a sync
measures launches, not work. Events recorded on the GPU's stream time the work itself
without stalling the host between passes; they only compare within one device, so a model
spread over several GPUs is timed by synchronising them all around a host clock.

This module knows nothing about models; it imports torch only.
"""

from __future__ import annotations

import statistics
import time
from typing import Iterable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the GPUs, every one of them: a model spread over several finishes on its last."""
    if device.type == "cuda":
        for index in range(torch.cuda.device_count()):
            torch.cuda.synchronize(index)


def device_time(device: torch.device) -> float:
    """A host clock read once the device has finished its queued work: the difference of two
    reads times the work between them (a loop that splits one call into parts reads it often)."""
    synchronize(device)
    return time.perf_counter()


def median(seconds: Iterable[float]) -> float:
    """The median of repeated timings (the mean of the two middle ones for an even count)."""
    return statistics.median(seconds)


class Stopwatch:
    """`with Stopwatch(device) as watch: ...` then `watch.seconds`."""

    def __init__(self, device: torch.device, events: bool | None = None):
        # events by default where one GPU does all the work
        self.device = device
        self.events = device.type == "cuda" and torch.cuda.device_count() == 1 if events is None else events
        self.seconds = 0.0

    def __enter__(self) -> "Stopwatch":
        if self.events:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            synchronize(self.device)
            self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.events:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000
        else:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self._started
