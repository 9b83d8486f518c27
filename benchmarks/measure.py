"""Timing and peak memory for the benchmarks: CPU peak from the process's resident set, CUDA from the allocator."""

from __future__ import annotations

import resource
from typing import Callable

import torch


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_bytes(step: Callable[[], object], device: str) -> int:
    """Memory one call of `step` needs above what is allocated before it.

    CPU: the rise of the process's peak resident set, so call this first in a fresh process, before anything has
    pushed the peak higher. CUDA: the allocator's peak.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with open("/proc/self/statm") as statm:
        before = int(statm.read().split()[1]) * resource.getpagesize()
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
