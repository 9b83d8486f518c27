"""One nnU-Net training step, stock U-Net against DCA U-Net built from the same plans: time and peak memory ratios.

Each network comes from its trainer's own builder (`nnUNetTrainer.build_network_architecture` and
`nnUNetTrainerDCA[_FullGrid].build_network_architecture`, one PlansManager). A step is nnU-Net's: forward with deep
supervision, a cross-entropy on every output, backward. Steps of the two networks alternate in one process; the
table gives median times and the median of the per-pair ratios, and the peak memory of one step of each.

    python benchmarks/trainer_step.py [--configs 2d_256 2d_512 2d_512_fullgrid 3d_128] [--repeats 5]
                                      [--device cpu|cuda] [--amp] [--compile]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from ct_plans import CONFIGS, NUM_CLASSES, plans_with
from measure import peak_bytes, synchronize


def build(config: str, network: str, device: str) -> torch.nn.Module:
    configuration, dca_trainer = CONFIGS[config]
    plans = PlansManager(plans_with(config))
    trainer = nnUNetTrainer if network == "stock" else dca_trainer
    torch.manual_seed(0)
    return trainer.build_network_architecture(plans, plans.get_configuration(config), 1, NUM_CLASSES, True).to(device)


def training_step(config: str, network: torch.nn.Module, device: str, amp: bool) -> Callable[[], None]:
    configuration = CONFIGS[config][0]
    patch_size, batch = configuration["patch_size"], configuration["batch_size"]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, *patch_size, generator=generator).to(device)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in network(x)]
    targets = [torch.randint(NUM_CLASSES, (batch, *shape), generator=generator).to(device) for shape in shapes]
    amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16

    def step() -> None:
        with torch.autocast(device, dtype=amp_dtype, enabled=amp):
            loss = sum(F.cross_entropy(o, t) for o, t in zip(network(x), targets))
        loss.backward()
        network.zero_grad(set_to_none=True)
        synchronize(device)

    return step


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="autocast: float16 on CUDA, bfloat16 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks, as nnU-Net on GPU")
    args = parser.parse_args()

    flags = [f for f, on in (("--amp", args.amp), ("--compile", args.compile)) if on]
    rows = []
    for config in args.configs:
        steps = {}
        for network in ("stock", "dca"):
            model = build(config, network, args.device)
            steps[network] = training_step(config, torch.compile(model) if args.compile else model, args.device,
                                           args.amp)
            steps[network]()  # warm-up (and compilation)
        times = {"stock": [], "dca": []}
        for _ in range(args.repeats):
            for network in ("stock", "dca"):
                times[network].append(timed(steps[network]))
        ratio = statistics.median(d / s for d, s in zip(times["dca"], times["stock"]))
        peaks = {network: peak_bytes(step, args.device) for network, step in steps.items()}
        rows.append(f"| {config} | {statistics.median(times['stock']):.2f} | {statistics.median(times['dca']):.2f} | "
                    f"{ratio:.3f} | {peaks['stock'] / 2**20:.0f} | {peaks['dca'] / 2**20:.0f} | "
                    f"{peaks['dca'] / peaks['stock']:.3f} |")
        del steps
    print(f"Training step (batch 2, deep supervision, backward), median of {args.repeats} alternated runs; "
          f"{args.device}{' ' + ' '.join(flags) if flags else ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}")
    print("| config | stock (s) | DCA (s) | time DCA / stock | stock peak (MiB) | DCA peak (MiB) | memory DCA / stock |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
