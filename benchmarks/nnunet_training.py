"""Short in-process trainings with nnU-Net's own trainers, for the training benchmarks.

The folders: a dataset named by id or name in the user's nnUNet_preprocessed, or one of the real datasets of
real_data.py (converted and preprocessed into OUT on first use). Every training writes into OUT/nnUNet_results,
never into the user's nnUNet_results.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import sys
from pathlib import Path

import numpy as np

from real_data import WRITERS, prepare


def set_up_folders(dataset: str, configuration: str, out: Path, workers: int) -> str:
    """Points nnU-Net's folders and nnUNet_extTrainer where the trainings need them and returns the dataset's
    name, preparing a real dataset if one is named. Call it before anything imports nnunetv2, which reads its
    folders on import."""
    from nnunet_dca.trainers import ext_trainer_value

    if dataset in WRITERS:
        os.environ["nnUNet_raw"] = str(out / "nnUNet_raw")
        os.environ["nnUNet_preprocessed"] = str(out / "nnUNet_preprocessed")
    elif not os.environ.get("nnUNet_preprocessed"):
        sys.exit(f"dataset {dataset!r}: nnUNet_preprocessed is not set; export it as for nnUNetv2_train, or name one "
                 f"of the real datasets {sorted(WRITERS)}")
    os.environ.setdefault("nnUNet_raw", str(out / "nnUNet_raw"))
    os.environ["nnUNet_results"] = str(out / "nnUNet_results")
    os.environ["nnUNet_extTrainer"] = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))
    os.environ.pop("nnUNet_n_proc_DA", None)  # nnU-Net's planner fails at 0
    if dataset in WRITERS:
        name = prepare(dataset, configuration)
    else:
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        name = maybe_convert_to_dataset_name(dataset)
    os.environ["nnUNet_n_proc_DA"] = str(workers)
    return name


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_trainer(trainer_name: str, dataset: str, configuration: str, fold: int, batch_size: int | None,
                device: str, seed: int):
    """The trainer nnUNetv2_train would make, initialized, its network built from `seed`; `batch_size` None keeps
    the plans'. The data's randomness is seeded afresh from `seed` after the network is built, so runs of two
    trainers with one seed draw the same batches (with nnUNet_n_proc_DA=0, one process) whatever the networks."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnunet_dca.warm_start import find_trainer_class

    folder = Path(os.environ["nnUNet_preprocessed"]) / dataset
    plans = load_json(str(folder / "nnUNetPlans.json"))
    if configuration not in plans["configurations"]:
        sys.exit(f"configuration {configuration!r} is not in the plans of {dataset}; there are "
                 f"{list(plans['configurations'])} (nnUNetv2_plan_and_preprocess -c {configuration})")
    if batch_size is not None:
        plans["configurations"][configuration]["batch_size"] = batch_size
    trainer_class = find_trainer_class(trainer_name)
    seed_everything(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer narrates its set-up
        trainer = trainer_class({**plans, "continue_training": False}, configuration, fold,
                                load_json(str(folder / "dataset.json")), torch.device(device))
        trainer.initialize()
    seed_everything(seed + 1_000_003)
    return trainer

