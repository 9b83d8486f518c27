"""What the benchmarks share: timing alternated runs, peak memory, the tables and the environment they ran in."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import torch

from nnunet_dca.allocator import PRELOADABLE, current_allocator, run_under


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_bytes(step: Callable[[], object], device: str) -> int:
    """The peak, during one call of `step`, of the bytes allocated since it started.

    CUDA: the caching allocator's peak statistics. CPU has no such statistics, so the profiler records every
    allocation and free of the call, and the peak of their running sum is taken.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        step()
    allocations = sorted((event.start_ns(), event.nbytes()) for event in profile.profiler.kineto_results.events()
                         if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU)
    held = peak = 0
    for _, nbytes in allocations:
        held += nbytes
        peak = max(peak, held)
    return peak


def alternated_times(calls: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds of each call in `repeats` rounds, the calls alternating within a round (warm up before)."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def ratio_cells(times: dict[str, list[float]]) -> str:
    """Table cells: stock's median seconds | DCA's | the median of the per-round ratios DCA / stock."""
    ratio = statistics.median(d / s for d, s in zip(times["dca"], times["stock"]))
    return f"{statistics.median(times['stock']):.2f} | {statistics.median(times['dca']):.2f} | {ratio:.3f}"


def print_table(title: str, header: list[str], rows: list[str]) -> None:
    """Prints a markdown table under its title line; rows are already formatted '| ... |' lines."""
    print(title)
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    print("\n".join(rows))


def add_allocator_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allocator", choices=list(PRELOADABLE),
                        help="re-run this script with tcmalloc or jemalloc preloaded (LD_PRELOAD), as a caching "
                             "allocator keeps memory between steps like PyTorch's CUDA allocator (docs/cpu.md)")


def use_allocator(args: argparse.Namespace) -> None:
    """Re-executes the script under `--allocator` where one is asked for and not already running."""
    if args.allocator:
        run_under(args.allocator)


def environment(device: str) -> str:
    """The device, torch, threads, machine and the allocator read from this process (on CUDA: the host's)."""
    allocator = current_allocator()
    if device == "cpu":
        memory = f"allocator {allocator}"
    else:
        device, memory = f"cuda ({torch.cuda.get_device_name()})", f"CUDA caching allocator (host: {allocator})"
    return f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, {memory}"
