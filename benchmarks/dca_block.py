"""Forward+backward time and peak memory of the DCA block: fused path, math path, naive formulation.

Features [32, 64, 128, 256] on skips at strides 1, 2, 4, 8 (a U-Net's ladder: each stage a quarter of the pixels of
the one above), the token grid the size of the deepest skip: 28 x 28 (784 tokens, the paper's 224 x 224 input),
32 x 32 (1024) and 64 x 64 (4096).

    python benchmarks/dca_block.py [--batch 2] [--repeats 3] [--grids 28 32 64] [--device cpu]
                                   [--allocator tcmalloc|jemalloc]

The FLOP floor is the block's own matrix products at their own sizes (flops.py), the same for every path; GFLOP/s
divides it by each path's time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flops import count_flops
from measure import add_allocator_option, environment, peak_bytes, print_table, synchronize, use_allocator
from nnunet_dca import DCA
from nnunet_dca.naive import NaiveDCA

FEATURES = [32, 64, 128, 256]
STRIDES = [1, 2, 4, 8]
IMPLEMENTATIONS = ["fused", "math", "naive"]


def skips_for(grid: int, batch: int, device: str) -> list[torch.Tensor]:
    return [torch.randn(batch, c, grid * 8 // s, grid * 8 // s, device=device, requires_grad=True)
            for c, s in zip(FEATURES, STRIDES)]


def floor_flops(grid: int, batch: int) -> int:
    """FLOPs of the block's forward and backward at the floor (its explicit path, on CPU)."""
    model = DCA(FEATURES, token_grid=grid)
    skips = skips_for(grid, batch, "cpu")
    return count_flops(model, lambda: model(skips), backward=True)


def run_one(implementation: str, grid: int, batch: int, repeats: int, device: str) -> dict:
    """Forward+backward of one implementation: peak memory of one step, median time of the next ones."""
    torch.manual_seed(0)
    if implementation == "naive":
        model = NaiveDCA(FEATURES, token_grid=grid)
    else:
        model = DCA(FEATURES, token_grid=grid, fused_attention=implementation == "fused")
    model.to(device)
    skips = skips_for(grid, batch, device)

    def step() -> None:
        sum(o.square().mean() for o in model(skips)).backward()
        synchronize(device)

    peak = peak_bytes(step, device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grids", type=int, nargs="+", default=[28, 32, 64])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_allocator_option(parser)
    args = parser.parse_args()
    use_allocator(args)

    rows = []
    for grid in args.grids:
        results = {implementation: run_one(implementation, grid, args.batch, args.repeats, args.device)
                   for implementation in IMPLEMENTATIONS}
        naive, gflop = results["naive"], floor_flops(grid, args.batch) / 1e9
        for implementation, result in results.items():
            rows.append(f"| {grid * grid} ({grid} x {grid}) | {implementation} | {result['seconds']:.3f} | "
                        f"{result['peak_bytes'] / 2**20:.0f} | {result['seconds'] / naive['seconds']:.2f} | "
                        f"{result['peak_bytes'] / naive['peak_bytes']:.2f} | {gflop:.2f} | "
                        f"{gflop / result['seconds']:.1f} |")
    print_table(f"DCA block, features {FEATURES}, batch {args.batch}, forward+backward, median of {args.repeats}; "
                f"{environment(args.device)}",
                ["tokens", "path", "time (s)", "peak memory (MiB)", "time / naive", "memory / naive",
                 "FLOP floor (GFLOP)", "GFLOP/s"], rows)


if __name__ == "__main__":
    main()
