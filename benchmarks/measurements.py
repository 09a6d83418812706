"""What the benchmarks share: side-by-side medians on a steady allocator (pose/allocator.py,
as the tools use it), and the bytes autograd keeps for backward."""
from __future__ import annotations

import random
import statistics
import time
from typing import Any, Callable

import torch

from pose.allocator import keep_freed_memory  # noqa: F401 (the benchmarks' steady allocator)


def saved_bytes(forward: Callable[[], Any]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``forward()`` runs
    (inputs it saves included): the activation memory a step holds at its peak."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


def device_sync(device: torch.device) -> Callable[[], None]:
    """What waits for a device's queued work before a clock is read: CUDA runs asynchronously."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def interleaved_medians(steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 3,
                        sync: Callable[[], None] = lambda: None,
                        before: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds of each step. The steps take turns, one call at a time, so that a slow
    spell of the machine hits all of them alike, in a new random order each round: a step
    pays for some of its predecessor's work (the lines that step wrote are still dirty in
    cache, and evicting them costs whoever runs next), so in a fixed order the same layer
    took 0.3 ms more after ReLU's step than after another DY-ReLU layer's. ``before`` runs
    ahead of each timed call, untimed."""
    order = random.Random(0)  # the same orders in every run
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for _ in range(repeats):
        order.shuffle(names)
        for name in names:
            step = steps[name]
            before()
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
