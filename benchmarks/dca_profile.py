"""Where DCA's own time goes: torch.profiler over the DCA module alone, forward and backward, at a plan's skips.

The skips are the stock encoder's outputs for the planned batch and patch (random input), the DCA module the one its
trainer builds. The table groups ATen operators by self CPU time (or CUDA time on --device cuda), over --repeats
steps after a warm-up.

    python benchmarks/dca_profile.py --plans ../shared/plans/Dataset004_Hippocampus/nnUNetPlans.json -c 2d
                                     [--repeats 3] [--top 15] [--device cpu|cuda] [--allocator tcmalloc|jemalloc]
"""

from __future__ import annotations

import argparse

import torch

from cases import plans_cases
from measure import add_allocator_option, environment, print_table, synchronize, use_allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", required=True, help="a plans file nnU-Net wrote, with its dataset.json beside it")
    parser.add_argument("-c", dest="configuration", default="2d")
    parser.add_argument("--dca-trainer", default="nnUNetTrainerDCA")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_allocator_option(parser)
    args = parser.parse_args()
    use_allocator(args)

    case, = plans_cases(args.plans, [args.configuration], args.dca_trainer)
    network = case.build("dca").to(args.device)
    configuration = case.configuration_manager
    x = torch.randn(configuration.batch_size, case.input_channels, *configuration.patch_size, device=args.device)
    with torch.no_grad():
        skips = [s.requires_grad_() for s in network.encoder(x)[:network.stages]]
    # the decoder's gradients, given: a loss computed here would add its own work at skip resolution
    gradients = [torch.randn_like(s) for s in skips]

    def step() -> None:
        torch.autograd.backward(network.dca(skips), gradients)
        synchronize(args.device)

    step()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                          if args.device == "cuda" else [])
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(args.repeats):
            step()
    key = "self_device_time_total" if args.device == "cuda" else "self_cpu_time_total"
    events = sorted(profile.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events)
    rows = [f"| {e.key} | {e.count // args.repeats} | {getattr(e, key) / args.repeats / 1e3:.1f} | "
            f"{getattr(e, key) / total:.1%} |" for e in events[:args.top]]
    rows.append(f"| all | | {total / args.repeats / 1e3:.1f} | 100% |")
    print_table(f"DCA alone, {case.name}, batch {configuration.batch_size}, forward+backward, per step (mean of "
                f"{args.repeats}); {environment(args.device)}", ["operator", "calls", "self time (ms)", "share"], rows)


if __name__ == "__main__":
    main()
