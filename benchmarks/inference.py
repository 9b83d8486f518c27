"""Sliding-window inference with nnU-Net's predictor: a stock model folder against a DCA model folder, same plans.

Both folders are written as nnUNetv2_train leaves them (plans.json, dataset.json, fold_0/checkpoint_final.pth with
random weights) and loaded by `nnUNetPredictor.initialize_from_trained_model_folder`, which finds
nnUNetTrainerDCA through nnUNet_extTrainer. One synthetic preprocessed volume; the two predictors alternate and the
table gives median times and the median of the per-pair ratios. Mirroring is off unless --mirroring (it multiplies
both times alike).

    python benchmarks/inference.py [--configs 2d_512 3d_128]
                                   [--plans ../shared/plans/Dataset004_Hippocampus/nnUNetPlans.json -c 2d 3d_fullres]
                                   [--repeats 3] [--device cpu|cuda] [--mirroring] [--allocator tcmalloc|jemalloc]

A plans file's configurations predict an image of the plans' median size. The FLOP floor is DCA's FLOPs / stock's
for one forward pass of a tile (flops.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from cases import Case, ct_cases, plans_cases
from ct_plans import CONFIGS
from flops import flop_floor
from measure import add_allocator_option, alternated_times, environment, print_table, ratio_cells, use_allocator
from nnunet_dca.trainers import trainer_dir


def write_model_folder(folder: str, case: Case, network: str) -> None:
    """A model folder as nnUNetv2_train writes it, with the trainer's network at its initial (random) weights."""
    trainer = case.trainer(network)
    weights = case.build(network, deep_supervision=False).state_dict()
    os.makedirs(os.path.join(folder, "fold_0"))
    for name, content in (("plans.json", case.plans), ("dataset.json", case.dataset_json)):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(content, f)
    dims = len(case.configuration_manager.patch_size)
    torch.save({"network_weights": weights, "trainer_name": trainer.__name__,
                "init_args": {"configuration": case.configuration}, "inference_allowed_mirroring_axes":
                    tuple(range(dims))}, os.path.join(folder, "fold_0", "checkpoint_final.pth"))


def predict(predictor: nnUNetPredictor, volume: torch.Tensor) -> None:
    with torch.no_grad():
        predictor.predict_sliding_window_return_logits(volume)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=None, choices=list(CONFIGS),
                        help="CT-like configurations (default: 2d_512 3d_128, unless --plans is given)")
    parser.add_argument("--plans", help="a plans file nnU-Net wrote, with its dataset.json beside it")
    parser.add_argument("-c", dest="plans_configurations", nargs="+", default=["2d"],
                        help="configurations of --plans (default: 2d)")
    parser.add_argument("--dca-trainer", default="nnUNetTrainerDCA",
                        help="the DCA trainer of the --plans rows, e.g. nnUNetTrainerDCA_Paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mirroring", action="store_true", help="test-time mirroring, as nnUNetv2_predict does")
    add_allocator_option(parser)
    args = parser.parse_args()
    use_allocator(args)
    os.environ["nnUNet_extTrainer"] = os.pathsep.join(filter(None, [trainer_dir(),
                                                                    os.environ.get("nnUNet_extTrainer")]))
    configs = args.configs if args.configs is not None else ([] if args.plans else ["2d_512", "3d_128"])
    cases = ct_cases(configs)
    if args.plans:
        cases += plans_cases(args.plans, args.plans_configurations, args.dca_trainer)

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for index, case in enumerate(cases):
            predictors = {}
            for network in ("stock", "dca"):
                folder = os.path.join(workdir, f"{index}_{network}")
                write_model_folder(folder, case, network)
                predictor = nnUNetPredictor(use_mirroring=args.mirroring, device=torch.device(args.device),
                                            allow_tqdm=False)
                predictor.initialize_from_trained_model_folder(folder, use_folds=(0,))
                predictors[network] = predictor
            volume = torch.randn(case.input_channels, *case.volume, generator=torch.Generator().manual_seed(0))
            calls = {network: functools.partial(predict, predictor, volume)
                     for network, predictor in predictors.items()}
            alternated_times(calls, 1, args.device)  # warm-up
            times = alternated_times(calls, args.repeats, args.device)
            rows.append(f"| {case.name} | {'x'.join(map(str, case.volume))} | {ratio_cells(times)} | "
                        f"{flop_floor(case, training=False):.3f} |")
    print_table(f"Sliding-window inference (nnUNetPredictor, step 0.5, gaussian, mirroring "
                f"{'on' if args.mirroring else 'off'}), median of {args.repeats} alternated runs; "
                f"{environment(args.device)}",
                ["config", "volume", "stock (s)", "DCA (s)", "time DCA / stock", "FLOP floor"], rows)


if __name__ == "__main__":
    main()
