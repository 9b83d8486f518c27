"""What the benchmarks compare: a stock network and its DCA network from one plans configuration.

A case comes from the CT-like plans made here (ct_plans.py) or from any plans file nnU-Net wrote, with the
dataset.json beside it (for example ../shared/plans/Dataset004_Hippocampus, nnU-Net's real plans for MSD Task04).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from ct_plans import CONFIGS, DATASET_JSON, plans_with
from nnunet_dca.trainers import nnUNetTrainerDCA as dca_trainers
from nnunet_dca.trainers.nnUNetTrainerDCA import nnUNetTrainerDCA

# a few slices or a few 3D tiles of the CT-like configurations: enough for the sliding window to overlap tiles
CT_VOLUMES = {"2d_256": (4, 256, 256), "2d_512": (4, 512, 512), "2d_512_fullgrid": (4, 512, 512),
              "3d_128": (128, 128, 160)}


@dataclass(frozen=True)
class Case:
    """One row of a table: `configuration` of `plans`, its stock trainer against `dca_trainer`."""

    name: str
    plans: dict
    configuration: str
    dca_trainer: type
    dataset_json: dict
    volume: tuple[int, ...]  # a preprocessed image for sliding-window inference, channels left out

    @property
    def plans_manager(self) -> PlansManager:
        return PlansManager(self.plans)

    @property
    def configuration_manager(self):
        return self.plans_manager.get_configuration(self.configuration)

    @property
    def input_channels(self) -> int:
        return determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)

    @property
    def num_classes(self) -> int:
        return self.plans_manager.get_label_manager(self.dataset_json).num_segmentation_heads

    def trainer(self, network: str) -> type:
        return nnUNetTrainer if network == "stock" else self.dca_trainer

    def build(self, network: str, deep_supervision: bool = True) -> torch.nn.Module:
        """The network its trainer builds ("stock" or "dca"), with the same seed for both."""
        torch.manual_seed(0)
        return self.trainer(network).build_network_architecture(
            self.plans_manager, self.configuration_manager, self.input_channels, self.num_classes, deep_supervision)


def ct_cases(names: list[str]) -> list[Case]:
    return [Case(name, plans_with(name), name, CONFIGS[name][1], DATASET_JSON, CT_VOLUMES[name]) for name in names]


def plans_cases(plans_file: str, configurations: list[str], dca_trainer: str = "nnUNetTrainerDCA") -> list[Case]:
    """Cases of a plans file nnU-Net wrote, stock against `dca_trainer` (one of nnunet-dca's trainers, by name);
    its dataset.json is read from the same folder."""
    trainer = getattr(dca_trainers, dca_trainer, None)
    if not (isinstance(trainer, type) and issubclass(trainer, nnUNetTrainerDCA)):
        names = sorted(name for name, value in vars(dca_trainers).items()
                       if isinstance(value, type) and issubclass(value, nnUNetTrainerDCA))
        raise SystemExit(f"--dca-trainer {dca_trainer!r} is not one of nnunet-dca's trainers: {names}")
    with open(plans_file) as f:
        plans = json.load(f)
    with open(os.path.join(os.path.dirname(plans_file), "dataset.json")) as f:
        dataset_json = json.load(f)
    return [Case(f"{plans['dataset_name']} {c}", plans, c, trainer, dataset_json, _median_volume(plans, c))
            for c in configurations]


def _median_volume(plans: dict, configuration: str) -> tuple[int, ...]:
    # a 2d configuration predicts a 3D image slice by slice: its slices come from the 3d_fullres median
    median = PlansManager(plans).get_configuration(configuration).median_image_size_in_voxels
    if len(median) == 2:
        full = plans["configurations"].get("3d_fullres", {}).get("median_image_size_in_voxels", [4])
        median = [full[0], *median]
    return tuple(math.ceil(s) for s in median)
