"""Forward+backward time and peak memory of the DCA block: fused path, math path, naive formulation.

Features [32, 64, 128, 256] on skips at strides 1, 2, 4, 8 (a U-Net's ladder: each stage a quarter of the pixels of
the one above), the token grid the size of the deepest skip: 28 x 28 (784 tokens, the paper's 224 x 224 input),
32 x 32 (1024) and 64 x 64 (4096).

    python benchmarks/dca_block.py [--batch 2] [--repeats 3] [--grids 28 32 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from measure import environment, peak_bytes, print_table, synchronize
from nnunet_dca import DCA
from nnunet_dca.naive import NaiveDCA

FEATURES = [32, 64, 128, 256]
STRIDES = [1, 2, 4, 8]
IMPLEMENTATIONS = ["fused", "math", "naive"]


def run_one(implementation: str, grid: int, batch: int, repeats: int, device: str) -> dict:
    """Forward+backward of one implementation: peak memory of one step, median time of the next ones."""
    torch.manual_seed(0)
    if implementation == "naive":
        model = NaiveDCA(FEATURES, token_grid=grid)
    else:
        model = DCA(FEATURES, token_grid=grid, fused_attention=implementation == "fused")
    model.to(device)
    skips = [torch.randn(batch, c, grid * 8 // s, grid * 8 // s, device=device, requires_grad=True)
             for c, s in zip(FEATURES, STRIDES)]

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
    args = parser.parse_args()

    rows = []
    for grid in args.grids:
        results = {implementation: run_one(implementation, grid, args.batch, args.repeats, args.device)
                   for implementation in IMPLEMENTATIONS}
        naive = results["naive"]
        for implementation, result in results.items():
            rows.append(f"| {grid * grid} ({grid} x {grid}) | {implementation} | {result['seconds']:.3f} | "
                        f"{result['peak_bytes'] / 2**20:.0f} | {result['seconds'] / naive['seconds']:.2f} | "
                        f"{result['peak_bytes'] / naive['peak_bytes']:.2f} |")
    print_table(f"DCA block, features {FEATURES}, batch {args.batch}, forward+backward, median of {args.repeats}; "
                f"{environment(args.device)}",
                ["tokens", "path", "time (s)", "peak memory (MiB)", "time / naive", "memory / naive"], rows)


if __name__ == "__main__":
    main()
