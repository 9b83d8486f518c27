"""nnUNetTrainerDCA and its variants: nnU-Net's training with DCA skip connections (Ates, Mohan, Celik 2023).

Use: nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerDCA, with nnUNet_extTrainer pointing at this folder.
Subclass any of them from your own folder on nnUNet_extTrainer:

    from nnunet_dca.trainers.nnUNetTrainerDCA import nnUNetTrainerDCA

    class nnUNetTrainerDCA_2Blocks(nnUNetTrainerDCA):
        dca_overrides = {"n_blocks": 2}
"""

from __future__ import annotations

import json
from typing import Any

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_dca.config import resolved_dca_block, saved_dca_block
from nnunet_dca.network import DCAUNet

RESOLVED_KEY = "dca_resolved"  # where a model folder's plans.json keeps the settings its folds were trained with


class nnUNetTrainerDCA(nnUNetTrainer):
    """nnUNetTrainer whose network is the plans' U-Net with DCA on its first encoder skips (see DCAUNet).

    DCA settings: the configuration's optional `dca` block in the plans, with `dca_overrides` merged over it and
    every default filled in. The trainer writes that resolved block, as `dca_resolved`, into the plans.json it keeps
    in the model folder, and prediction builds from it as it is, so a model keeps its settings when the plans, the
    defaults or a variant's overrides change later. A fold whose settings differ from those already in its model
    folder is refused before it trains.
    A subclass sets `dca_overrides` and/or `epochs` (None keeps nnU-Net's default) and nothing else.
    """

    dca_overrides: dict[str, Any] = {}
    epochs: int | None = None

    # nnUNetTrainer.__init__ records its arguments by reading this signature, so it must match nnU-Net's
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.epochs is not None:
            self.num_epochs = self.epochs
        # resolved anew, never taken from the plans given: a resolved block there (a model folder's plans.json
        # copied back) may be another trainer's
        dca = self._resolve(self.configuration_manager.configuration)
        if self.output_folder_base is not None:
            self._check_model_folder_settings(dca)
        # nnUNetTrainer.on_train_start saves these plans as the model folder's plans.json
        self.plans_manager.plans["configurations"][configuration][RESOLVED_KEY] = dca
        self.configuration_manager.configuration[RESOLVED_KEY] = dca

    @classmethod
    def dca_settings(cls, configuration: dict) -> dict[str, Any]:
        """The DCA settings a plans configuration builds with: a model folder's resolved block as it is, else the
        configuration's `dca` block with this trainer's `dca_overrides` over it, every default filled in."""
        if RESOLVED_KEY in configuration:
            return saved_dca_block(configuration[RESOLVED_KEY])
        return cls._resolve(configuration)

    @classmethod
    def _resolve(cls, configuration: dict) -> dict[str, Any]:
        return resolved_dca_block({**(configuration.get("dca") or {}), **cls.dca_overrides})

    # a classmethod where nnU-Net has a staticmethod: called the same way, and sees a variant's dca_overrides
    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        return DCAUNet(network, cls.dca_settings(configuration_manager.configuration))

    def _check_model_folder_settings(self, dca: dict[str, Any]) -> None:
        saved_plans = join(self.output_folder_base, "plans.json")
        if not isfile(saved_plans):
            return
        saved = load_json(saved_plans)["configurations"].get(self.configuration_name, {}).get(RESOLVED_KEY)
        # a model folder of an nnunet-dca that saved no settings keeps no record to compare with
        if saved is None:
            return
        saved = saved_dca_block(saved)
        differences = [f"{key}: {json.dumps(saved[key])} there, {json.dumps(dca[key])} now"
                       for key in saved if saved[key] != dca[key]]
        if differences:
            raise RuntimeError(
                f"the DCA settings of {self.__class__.__name__} for {self.configuration_name!r} differ from those the "
                f"folds in {self.output_folder_base} were trained with ({'; '.join(differences)}), so fold "
                f"{self.fold} would train another network. Restore those settings in the plans' dca block, or train "
                f"the new settings under a new trainer name (a subclass) or plans identifier (-p), or move that "
                f"model folder away to retrain every fold")


class nnUNetTrainerDCA_Paper(nnUNetTrainerDCA):
    """The paper's block exactly: the refined skip is ReLU(BatchNorm(skip + branch)), the branch's 1x1 conv with
    PyTorch's default init, so DCA changes every skip from the first step (nnUNetTrainerDCA starts the branch at
    zero and adds it to the skip)."""
    dca_overrides = {"merge": "paper"}


class nnUNetTrainerDCA_CCAOnly(nnUNetTrainerDCA):
    """Ablation: channel cross-attention only (spatial attention off)."""
    dca_overrides = {"spatial_attention": False}


class nnUNetTrainerDCA_SCAOnly(nnUNetTrainerDCA):
    """Ablation: spatial cross-attention only (channel attention off)."""
    dca_overrides = {"channel_attention": False}


class nnUNetTrainerDCA_FullGrid(nnUNetTrainerDCA):
    """The paper's token grid, the deepest DCA skip's size, without the token cap (O(N^2) in tokens N)."""
    dca_overrides = {"max_tokens": None}


class nnUNetTrainerDCA_ChannelCosine(nnUNetTrainerDCA):
    """Channel attention's scores as cosines along the tokens times a learnable per-head temperature (XCiT)."""
    dca_overrides = {"channel_scores": "cosine"}


class nnUNetTrainerDCA_ChannelStandardized(nnUNetTrainerDCA):
    """Channel attention's score matrix standardized per head before the softmax (UCTransNet)."""
    dca_overrides = {"channel_scores": "standardized"}


class nnUNetTrainerDCA_SpatialQKNorm(nnUNetTrainerDCA):
    """Spatial attention's queries and keys L2-normalized, times log2(N^2 - N) and a learnable per-head temperature
    (QK-norm, Henry et al. 2020)."""
    dca_overrides = {"spatial_scores": "qk_norm"}


class nnUNetTrainerDCA_ChannelQKNorm(nnUNetTrainerDCA):
    """Channel attention's cosine scores times log2(L^2 - L) over its L keys and a learnable per-head temperature
    (QK-norm, Henry et al. 2020)."""
    dca_overrides = {"channel_scores": "qk_norm"}


class nnUNetTrainerDCA_QKNorm(nnUNetTrainerDCA):
    """QK-norm in both attentions: cosine scores times log2(L^2 - L) and a learnable per-head temperature."""
    dca_overrides = {"channel_scores": "qk_norm", "spatial_scores": "qk_norm"}


class nnUNetTrainerDCA_QKNorm_T2(nnUNetTrainerDCA):
    """QK-norm in both attentions, the temperatures starting at 2: twice QK-norm's starting scale."""
    dca_overrides = {"channel_scores": "qk_norm", "spatial_scores": "qk_norm", "temperature": 2.0}


class nnUNetTrainerDCA_CosineQKNorm(nnUNetTrainerDCA):
    """Cosine channel scores and QK-normed spatial scores together."""
    dca_overrides = {"channel_scores": "cosine", "spatial_scores": "qk_norm"}


class nnUNetTrainerDCA_StandardizedQKNorm(nnUNetTrainerDCA):
    """Standardized channel scores and QK-normed spatial scores together."""
    dca_overrides = {"channel_scores": "standardized", "spatial_scores": "qk_norm"}


# the epoch family, named as nnU-Net names its own (nnunetv2 .../variants/training_length/nnUNetTrainer_Xepochs.py)
class nnUNetTrainerDCA_1epoch(nnUNetTrainerDCA):
    epochs = 1


class nnUNetTrainerDCA_5epochs(nnUNetTrainerDCA):
    epochs = 5


class nnUNetTrainerDCA_10epochs(nnUNetTrainerDCA):
    epochs = 10


class nnUNetTrainerDCA_20epochs(nnUNetTrainerDCA):
    epochs = 20


class nnUNetTrainerDCA_50epochs(nnUNetTrainerDCA):
    epochs = 50


class nnUNetTrainerDCA_100epochs(nnUNetTrainerDCA):
    epochs = 100


class nnUNetTrainerDCA_250epochs(nnUNetTrainerDCA):
    epochs = 250


class nnUNetTrainerDCA_500epochs(nnUNetTrainerDCA):
    epochs = 500


class nnUNetTrainerDCA_750epochs(nnUNetTrainerDCA):
    epochs = 750


class nnUNetTrainerDCA_2000epochs(nnUNetTrainerDCA):
    epochs = 2000


class nnUNetTrainerDCA_4000epochs(nnUNetTrainerDCA):
    epochs = 4000


class nnUNetTrainerDCA_8000epochs(nnUNetTrainerDCA):
    epochs = 8000
