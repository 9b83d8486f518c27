"""One nnU-Net training step, stock U-Net against DCA U-Net built from the same plans: time and peak memory ratios.

Each network comes from its trainer's own builder (`nnUNetTrainer.build_network_architecture` and the DCA trainer's,
one PlansManager), at the planned batch size and patch. A step is nnU-Net's network work: forward with deep
supervision, a cross-entropy on every output, backward. Steps of the two networks alternate in one process; the
table gives median times and the median of the per-pair ratios, and the peak memory of one step of each.

    python benchmarks/trainer_step.py [--configs 2d_256 2d_512 2d_512_fullgrid 3d_128]
                                      [--plans ../shared/plans/Dataset004_Hippocampus/nnUNetPlans.json -c 2d 3d_fullres]
                                      [--repeats 5] [--device cpu|cuda] [--amp] [--compile]
                                      [--allocator tcmalloc|jemalloc]

--configs picks CT-like plans made here (ct_plans.py); --plans adds configurations of any plans file nnU-Net wrote.
The FLOP floor is DCA's FLOPs / stock's for the same step (flops.py): the ratio DCA's time could reach.
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch.nn.functional as F

from cases import Case, ct_cases, plans_cases
from ct_plans import CONFIGS
from flops import flop_floor
from measure import (
    add_allocator_option,
    alternated_times,
    environment,
    peak_bytes,
    print_table,
    ratio_cells,
    synchronize,
    use_allocator,
)


def training_step(case: Case, network: torch.nn.Module, device: str, amp: bool) -> Callable[[], None]:
    configuration = case.configuration_manager
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(configuration.batch_size, case.input_channels, *configuration.patch_size,
                    generator=generator).to(device)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in network(x)]
    targets = [torch.randint(case.num_classes, (configuration.batch_size, *shape), generator=generator).to(device)
               for shape in shapes]
    amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16

    def step() -> None:
        with torch.autocast(device, dtype=amp_dtype, enabled=amp):
            loss = sum(F.cross_entropy(o, t) for o, t in zip(network(x), targets))
        loss.backward()
        network.zero_grad(set_to_none=True)
        synchronize(device)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=None, choices=list(CONFIGS),
                        help="CT-like configurations (default: all of them, unless --plans is given)")
    parser.add_argument("--plans", help="a plans file nnU-Net wrote, with its dataset.json beside it")
    parser.add_argument("-c", dest="plans_configurations", nargs="+", default=["2d"],
                        help="configurations of --plans (default: 2d)")
    parser.add_argument("--dca-trainer", default="nnUNetTrainerDCA",
                        help="the DCA trainer of the --plans rows, e.g. nnUNetTrainerDCA_Paper")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="autocast: float16 on CUDA, bfloat16 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks, as nnU-Net on GPU")
    add_allocator_option(parser)
    args = parser.parse_args()
    use_allocator(args)
    configs = args.configs if args.configs is not None else ([] if args.plans else list(CONFIGS))
    cases = ct_cases(configs)
    if args.plans:
        cases += plans_cases(args.plans, args.plans_configurations, args.dca_trainer)

    flags = [f for f, on in (("--amp", args.amp), ("--compile", args.compile)) if on]
    rows = []
    for case in cases:
        steps = {}
        for network in ("stock", "dca"):
            model = case.build(network).to(args.device)
            steps[network] = training_step(case, torch.compile(model) if args.compile else model, args.device,
                                           args.amp)
            steps[network]()  # warm-up (and compilation)
        times = alternated_times(steps, args.repeats, args.device)
        peaks = {network: peak_bytes(step, args.device) for network, step in steps.items()}
        configuration = case.configuration_manager
        rows.append(f"| {case.name} | {configuration.batch_size} x {'x'.join(map(str, configuration.patch_size))} | "
                    f"{ratio_cells(times)} | {flop_floor(case, training=True):.3f} | "
                    f"{peaks['stock'] / 2**20:.0f} | {peaks['dca'] / 2**20:.0f} | "
                    f"{peaks['dca'] / peaks['stock']:.3f} |")
        del steps
    print_table(f"Training step (planned batch, deep supervision, backward), median of {args.repeats} alternated "
                f"runs; {environment(args.device)}{', ' + ' '.join(flags) if flags else ''}",
                ["config", "batch x patch", "stock (s)", "DCA (s)", "time DCA / stock", "FLOP floor",
                 "stock peak (MiB)", "DCA peak (MiB)", "memory DCA / stock"], rows)


if __name__ == "__main__":
    main()
