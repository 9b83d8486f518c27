"""`nnunet-dca warm-start`: a stock nnU-Net checkpoint made loadable by `nnUNetv2_train ... -pretrained_weights`.

nnU-Net's load_pretrained_weights needs every weight of the network in the file (the segmentation layers
aside), and a stock checkpoint has none of DCA's. The file written here holds every weight of the stock
checkpoint, unchanged, and DCA's weights as a fresh DCA network has them, built exactly as the trainer builds it
for the dataset and configuration; nnU-Net's own loader then takes it like any checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import os

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json, maybe_mkdir_p
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_dca.plans import find_plans_file, load_plans

DCA_PREFIX = "dca."  # DCAUNet keeps DCA's parameters under .dca
# what nnU-Net's load_pretrained_weights neither requires nor loads: the output layers, which depend on the labels
SEG_LAYERS = ".seg_layers."


def find_trainer_class(trainer_name: str) -> type:
    """The trainer class nnUNetv2_train would use: nnU-Net's own trainers first, then those on nnUNet_extTrainer."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the finder narrates its search
            return recursive_find_trainer_class_by_name(trainer_name)
    except Exception as e:  # RuntimeError if not found, AssertionError if not a trainer, any import error of a trainer
        raise RuntimeError(f"nnU-Net's trainer finder fails: {type(e).__name__}: {e}") from e


def warm_start(checkpoint_file: str, dataset: str | int, configuration: str, output_file: str,
               trainer_name: str = "nnUNetTrainerDCA", plans_identifier: str = "nnUNetPlans",
               overwrite: bool = False) -> dict[str, torch.Tensor]:
    """Writes `output_file` for `nnUNetv2_train dataset configuration FOLD -tr trainer_name -p plans_identifier
    -pretrained_weights output_file` and returns the weights written: every weight of the stock checkpoint, and
    DCA's weights freshly initialized. The checkpoint is never changed; the output is replaced only with `overwrite`.
    """
    _check_paths(checkpoint_file, output_file, overwrite)
    plans_file = find_plans_file(dataset, plans_identifier)
    stock_weights = _load_stock_weights(checkpoint_file)
    network_weights = _build_network(trainer_name, plans_file, configuration).state_dict()
    if not any(key.startswith(DCA_PREFIX) for key in network_weights):
        raise ValueError(f"{trainer_name} builds no DCA for configuration {configuration!r}, so a stock checkpoint "
                         f"loads into it as it is; pick a DCA trainer (-tr nnUNetTrainerDCA or a subclass), or a "
                         f"configuration made by nnunet-dca add-config")
    problem = _first_mismatch(stock_weights, network_weights)
    if problem:
        raise ValueError(f"the weights in {checkpoint_file} do not fit {trainer_name}'s network for configuration "
                         f"{configuration!r} of {plans_identifier}: {problem}; the stock model was likely trained "
                         f"with other plans or another configuration (pass its -p and -c)")
    weights = {**stock_weights, **{key: value for key, value in network_weights.items() if key.startswith(DCA_PREFIX)}}
    maybe_mkdir_p(os.path.dirname(os.path.abspath(output_file)))
    torch.save({"network_weights": weights}, output_file)
    return weights


def _check_paths(checkpoint_file: str, output_file: str, overwrite: bool) -> None:
    if not os.path.isfile(checkpoint_file):
        raise FileNotFoundError(f"{checkpoint_file} does not exist; give a stock model's checkpoint, e.g. "
                                f"$nnUNet_results/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__2d/fold_0/"
                                f"checkpoint_final.pth")
    if os.path.exists(output_file):
        if os.path.samefile(output_file, checkpoint_file):
            raise ValueError(f"{output_file} is the input checkpoint, which warm-start never changes; "
                             f"write the output elsewhere (-o)")
        if not overwrite:
            raise FileExistsError(f"{output_file} exists; pass --overwrite to replace it, or write elsewhere (-o)")


def _load_stock_weights(checkpoint_file: str) -> dict[str, torch.Tensor]:
    try:
        # nnU-Net's checkpoints pickle more than tensors, and nnU-Net loads them the same way
        checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    except Exception as e:  # torch.load raises whatever unpickling or unzipping a foreign file raises
        raise ValueError(f"{checkpoint_file} is not a PyTorch checkpoint ({type(e).__name__}: {e}); give a stock "
                         f"model's checkpoint_final.pth") from e
    weights = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise ValueError(f"{checkpoint_file} is not an nnU-Net checkpoint (no 'network_weights'); give a stock "
                         f"model's checkpoint_final.pth, as nnUNetv2_train writes it")
    dca_keys = [key for key in weights if key.startswith(DCA_PREFIX)]
    if dca_keys:
        raise ValueError(f"{checkpoint_file} already holds DCA weights ({dca_keys[0]}, ...), so it needs no warm "
                         f"start: pass it to nnUNetv2_train -pretrained_weights as it is")
    return weights


def _build_network(trainer_name: str, plans_file: str, configuration: str) -> nn.Module:
    # as nnUNetTrainer.initialize builds it; deep supervision changes no weight
    trainer_class = find_trainer_class(trainer_name)
    plans_manager = PlansManager(load_plans(plans_file))
    configuration_manager = plans_manager.get_configuration(configuration)
    dataset_json = load_json(join(os.path.dirname(plans_file), "dataset.json"))
    num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_output_channels = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    try:
        return trainer_class.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, True)
    except (TypeError, ValueError) as e:  # DCAUNet's refusal of a network or of the plans' dca block
        raise ValueError(f"{trainer_name} cannot build configuration {configuration!r}: {e}") from e


def _first_mismatch(stock_weights: dict[str, torch.Tensor], network_weights: dict[str, torch.Tensor]) -> str | None:
    """The first reason why the stock weights do not fit the network's weights other than DCA's, in words; None
    if they fit. The segmentation layers are left out, as nnU-Net's loader leaves them."""
    expected = {key: value for key, value in network_weights.items()
                if not key.startswith(DCA_PREFIX) and SEG_LAYERS not in key}
    given = {key: value for key, value in stock_weights.items() if SEG_LAYERS not in key}
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            return f"{what} {', '.join(keys[:3])}{more}"
    for key, value in expected.items():
        if given[key].shape != value.shape:
            return (f"{key} has shape {list(given[key].shape)} in the checkpoint, {list(value.shape)} in the "
                    f"network")
    return None
