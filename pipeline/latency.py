"""Timing networks fairly on a noisy CPU: several runners interleaved in one process.

The complexity stage and the latency benchmarks share this loop, so a figure in
``metrics/complexity.json`` and one printed by ``benchmarks/`` mean the same thing.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from tqdm import tqdm


def interleaved_latencies(runners: dict[str, Callable[[torch.Tensor], object]], input_size: int, runs: int,
                          warmup: int, progress: bool = True) -> dict[str, list[float]]:
    """Milliseconds per call of each runner, called in turn (A, B, A, B, ...) on one input."""
    x = torch.randn(1, 3, input_size, input_size)
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in runners.values():
                fn(x)
        for _ in tqdm(range(runs), desc="latency", unit="round", disable=not progress):
            for name, fn in runners.items():
                start = time.perf_counter()
                fn(x)
                times[name].append((time.perf_counter() - start) * 1e3)
    return times
