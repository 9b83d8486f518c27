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



def validation_probe(trainer, cases: int = 20):
    """One fixed batch of the first `cases` validation cases (sorted), a patch each: (data (B, C, *patch) float32,
    foreground (B, *patch) bool). A 2D configuration takes each case's slice with the most foreground; the patch is
    centred on the foreground's centroid (the image's centre without foreground), zero-padded where the image is
    smaller, as nnU-Net pads."""
    import torch

    patch = tuple(trainer.configuration_manager.patch_size)
    _, dataset_val = trainer.get_tr_and_val_datasets()
    images, masks = [], []
    for key in sorted(dataset_val.identifiers)[:cases]:
        data, seg, *_ = dataset_val.load_case(key)
        data, foreground = np.asarray(data, dtype=np.float32), np.asarray(seg[0]) > 0
        if len(patch) == 2:
            z = int(foreground.sum(axis=(1, 2)).argmax())
            data, foreground = data[:, z], foreground[z]
        voxels = np.argwhere(foreground)
        centre = voxels.mean(axis=0) if len(voxels) else (np.array(foreground.shape) - 1) / 2
        image, mask = np.zeros((data.shape[0], *patch), np.float32), np.zeros(patch, bool)
        source, target = [], []
        for c, size, length in zip(centre, patch, foreground.shape):
            start = int(round(c - size / 2)) if length > size else (length - size) // 2
            start = min(max(start, 0), length - size) if length > size else start
            source.append(slice(max(start, 0), min(start + size, length)))
            target.append(slice(max(-start, 0), max(-start, 0) + min(start + size, length) - max(start, 0)))
        image[(slice(None), *target)] = data[(slice(None), *source)]
        mask[tuple(target)] = foreground[tuple(source)]
        images.append(image)
        masks.append(mask)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))


def attention_summary(network, probe) -> list[dict]:
    """nnunet_dca.attention.statistics' summary of the network's DCA on the probe's batch (evaluation mode, no
    gradients, the network's mode restored after)."""
    import torch

    from nnunet_dca.attention.record import cpu_stages
    from nnunet_dca.attention.statistics import attention_rows, summarize
    from nnunet_dca.recording import DCARecorder

    network = getattr(network, "module", network)
    network = getattr(network, "_orig_mod", network)
    data, foreground = probe
    was_training = network.training
    device = next(network.parameters()).device
    network.eval()
    try:
        with torch.no_grad(), DCARecorder(network.dca) as recorder:
            network(data.to(device))
    finally:
        network.train(was_training)
    stages = cpu_stages(recorder.stages)
    grid = network.dca.grid_for([s.skip for s in stages])
    return summarize([attention_rows(stages, foreground, grid)])
