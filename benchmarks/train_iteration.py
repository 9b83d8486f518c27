"""nnU-Net's whole training iteration, nnUNetTrainer against nnUNetTrainerDCA on the same plans and data.

What a user sees per epoch: each trainer is set up as nnUNetv2_train sets it up (initialize, on_train_start with
its dataloader and data augmentation workers, on_train_epoch_start), on generated preprocessed data of the plans'
median image size, and one iteration is taking the next batch from its dataloader and `train_step` (loss with deep
supervision, backward, gradient clipping, optimizer step, grad scaler on CUDA). Iterations of the two trainers
alternate; the table gives median times and the median of the per-pair ratios.

    python benchmarks/train_iteration.py --plans ../shared/plans/Dataset004_Hippocampus/nnUNetPlans.json -c 2d
                                         [--repeats 5] [--device cpu|cuda] [--workers 2]
                                         [--allocator tcmalloc|jemalloc]

--workers sets nnUNet_n_proc_DA (data augmentation processes per trainer). The FLOP floor is the network's: DCA's
FLOPs / stock's for the training step (flops.py); loading and augmenting data add none to either.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import shutil
import sys
import tempfile

import numpy as np

# imports no nnU-Net: nnU-Net reads its folders when it is first imported, and main sets them first
from measure import add_allocator_option, alternated_times, environment, print_table, ratio_cells, use_allocator


def write_preprocessed_dataset(folder: str, case, n_cases: int) -> None:
    """plans, dataset.json, a fingerprint and `n_cases` cases of the plans' median size, as nnU-Net preprocesses."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy

    dataset = os.path.join(folder, case.plans["dataset_name"])
    data_folder = os.path.join(dataset, case.configuration_manager.data_identifier)
    os.makedirs(data_folder)
    for name, content in (("nnUNetPlans.json", case.plans), ("dataset.json", case.dataset_json),
                          ("dataset_fingerprint.json", {})):
        with open(os.path.join(dataset, name), "w") as f:
            json.dump(content, f)
    labels = case.plans_manager.get_label_manager(case.dataset_json)
    generator = np.random.default_rng(0)
    for index in range(n_cases):
        data = generator.standard_normal((case.input_channels, *case.volume)).astype(np.float32)
        # label blocks in the middle, so that foreground oversampling has locations to draw from
        seg = np.zeros((1, *case.volume), dtype=np.int8)
        middle = tuple(slice(s // 4, 3 * s // 4) for s in case.volume)
        seg[(0, *middle)] = generator.integers(0, labels.num_segmentation_heads, size=seg[(0, *middle)].shape)
        properties = {"class_locations": DefaultPreprocessor._sample_foreground_locations(
            seg, labels.foreground_labels), "spacing": case.configuration_manager.spacing}
        nnUNetDatasetNumpy.save_case(data, seg, properties, os.path.join(data_folder, f"case_{index:03d}"))
    # nnU-Net 2.8.1's on_train_start starts the dataloader's workers before it unpacks the .npz files, so its workers
    # can read an .npy while it is being written; unpacked here, every trainer finds them complete
    nnUNetDatasetNumpy.unpack_dataset(data_folder, overwrite_existing=False, num_processes=1)


def iteration(trainer) -> None:
    """What nnUNetTrainer.run_training does per iteration: the next batch, then train_step."""
    trainer.train_step(next(trainer.dataloader_train))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", required=True, help="a plans file nnU-Net wrote, with its dataset.json beside it")
    parser.add_argument("-c", dest="configurations", nargs="+", default=["2d"])
    parser.add_argument("--dca-trainer", default="nnUNetTrainerDCA",
                        help="the DCA trainer of the --plans rows, e.g. nnUNetTrainerDCA_Paper")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", default="2", help="nnUNet_n_proc_DA (default 2)")
    add_allocator_option(parser)
    args = parser.parse_args()
    use_allocator(args)

    workdir = tempfile.mkdtemp()
    # nnU-Net reads its folders when it is first imported
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[variable] = os.path.join(workdir, variable)
    os.environ["nnUNet_n_proc_DA"] = args.workers
    import torch

    from cases import plans_cases
    from flops import flop_floor

    rows = []
    try:
        for case in plans_cases(args.plans, args.configurations, args.dca_trainer):
            write_preprocessed_dataset(os.environ["nnUNet_preprocessed"], case, n_cases=10)
            trainers = {}
            for network in ("stock", "dca"):
                with contextlib.redirect_stdout(io.StringIO()):  # the trainer narrates its set-up
                    trainer = case.trainer(network)({**case.plans, "continue_training": False}, case.configuration,
                                                    0, case.dataset_json, torch.device(args.device))
                    trainer.on_train_start()
                    trainer.on_train_epoch_start()
                trainers[network] = trainer
            calls = {network: functools.partial(iteration, trainer) for network, trainer in trainers.items()}
            alternated_times(calls, 1, args.device)  # warm-up
            times = alternated_times(calls, args.repeats, args.device)
            for trainer in trainers.values():
                with contextlib.redirect_stdout(io.StringIO()):
                    trainer.on_train_end()
            configuration = case.configuration_manager
            rows.append(f"| {case.name} | {configuration.batch_size} x {'x'.join(map(str, configuration.patch_size))} "
                        f"| {ratio_cells(times)} | {flop_floor(case, training=True):.3f} |")
            shutil.rmtree(os.environ["nnUNet_preprocessed"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(f"nnU-Net training iteration (dataloader with {args.workers} augmentation workers, train_step), "
                f"median of {args.repeats} alternated runs; {environment(args.device)}",
                ["config", "batch x patch", "stock (s)", "DCA (s)", "time DCA / stock", "FLOP floor"], rows)


if __name__ == "__main__":
    sys.exit(main())
