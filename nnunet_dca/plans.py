"""The plans-only route: a DCA configuration added to an nnU-Net plans file.

The new configuration inherits from a source configuration (same data_identifier: no new preprocessing) and
replaces only its `architecture` block, which names DCAUNetFromPlans. The stock nnUNetTrainer then trains DCA,
and a model folder predicts wherever this package is installed, without nnUNet_extTrainer.

A cascade stage as the source (3d_cascade_fullres, whose `previous_stage` is 3d_lowres) makes a cascade DCA
configuration: it trains on the segmentations the previous stage's validation exports to
predicted_next_stage/<name> for each name in its `next_stage`, so the new name is added there too.

A configuration with trained folds in nnUNet_results is frozen: --overwrite may not change what its model folders
were trained with, since nnUNetv2_train --c and --val read the configuration from the plans file again.
"""

from __future__ import annotations

import json
import os
import pydoc
import stat
import tempfile
from typing import Any, Mapping

import torch
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, subdirs
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_dca.config import resolved_dca_block
from nnunet_dca.network import DCAUNetFromPlans

DCA_NETWORK_CLASS_NAME = f"{DCAUNetFromPlans.__module__}.{DCAUNetFromPlans.__name__}"
CHECKPOINT_FINAL = "checkpoint_final.pth"
CHECKPOINT_LATEST = "checkpoint_latest.pth"
# a fold holding any of these has been trained with the configuration, if only for an epoch
CHECKPOINTS = (CHECKPOINT_FINAL, CHECKPOINT_LATEST, "checkpoint_best.pth")


def find_plans_file(dataset: str | int, plans_identifier: str = "nnUNetPlans") -> str:
    """The plans file of a dataset (id like 4 or '4', or name like 'Dataset004_Hippocampus') in nnUNet_preprocessed."""
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if not preprocessed:
        raise RuntimeError("nnUNet_preprocessed is not set; export it as for nnUNetv2_plan_and_preprocess")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:  # nnU-Net's messages span lines; this one says what to give instead
        raise FileNotFoundError(f"no dataset {dataset!r} in nnUNet_preprocessed={preprocessed}: give the id (e.g. 4) "
                                f"or name (e.g. Dataset004_Hippocampus) of a dataset nnUNetv2_plan_and_preprocess "
                                f"planned there") from e
    dataset_folder = os.path.join(preprocessed, dataset_name)
    plans_file = os.path.join(dataset_folder, f"{plans_identifier}.json")
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(f"no plans file {plans_file}; plans found for this dataset: "
                                f"{_plans_identifiers(dataset_folder)} (run nnUNetv2_plan_and_preprocess first, "
                                f"or pick one of those with -p)")
    return plans_file


def load_plans(plans_file: str) -> dict:
    """The plans in `plans_file`; ValueError naming the file if it is not an nnU-Net plans file."""
    try:
        plans = load_json(plans_file)
    except json.JSONDecodeError as e:
        raise ValueError(f"{plans_file} is not valid JSON ({e}); restore it, or plan the dataset again "
                         f"(nnUNetv2_plan_experiment)") from e
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict):
        raise ValueError(f"{plans_file} is not an nnU-Net plans file (it has no 'configurations'); restore it, or "
                         f"plan the dataset again (nnUNetv2_plan_experiment)")
    return plans


def add_dca_configuration(plans_file: str, source_configuration: str = "2d", name: str | None = None,
                          dca: Mapping[str, Any] | None = None, overwrite: bool = False) -> str:
    """Adds a DCA configuration to a plans file and returns its name (default f'{source_configuration}_dca').

    The new configuration inherits from `source_configuration` and holds the full `architecture` block
    (nnU-Net's inheritance replaces top-level keys whole): network_class_name DCAUNetFromPlans, arch_kwargs =
    {'base_network_class_name': source class, **source arch_kwargs, 'dca': the validated dca block with every
    default filled in, so a model folder keeps its settings if the defaults change}. The network is built once
    on the meta device first, so settings it cannot take fail here. The one other configuration that can change
    is the source's previous stage, for a cascade source: the new name joins its `next_stage`, so that stage
    (re-)exports segmentations for it (train it, or rerun its validation with `nnUNetv2_train ... --val`).
    `overwrite` replaces a configuration of the same name only if add_dca_configuration made it, and, if any
    trainer has trained a fold of it (model folders in nnUNet_results), only with the same resolved configuration.
    A replaced cascade configuration leaves the `next_stage` of a previous stage it no longer has. The file is
    written only if every configuration in it still resolves, and then replaced atomically.
    """
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(f"plans file {plans_file} does not exist; run nnUNetv2_plan_and_preprocess first")
    plans = load_plans(plans_file)
    configurations = plans["configurations"]
    if source_configuration not in configurations:
        raise ValueError(f"configuration {source_configuration!r} is not in {plans_file}; "
                         f"available: {list(configurations)}")
    name = name or f"{source_configuration}_dca"
    if name == source_configuration:
        raise ValueError(f"the DCA configuration needs a name other than its source {source_configuration!r}")
    if name in configurations:
        # its own architecture, not the resolved one: a configuration inheriting from a DCA one is the user's
        if configurations[name].get("architecture", {}).get("network_class_name") != DCA_NETWORK_CLASS_NAME:
            raise FileExistsError(f"configuration {name!r} already exists in {plans_file}, and {name!r} was not "
                                  f"made by nnunet-dca (its architecture does not name {DCA_NETWORK_CLASS_NAME}), "
                                  f"so not even --overwrite replaces it; pick another name")
        if not overwrite:
            raise FileExistsError(f"configuration {name!r} already exists in {plans_file}; pick another name, "
                                  f"or pass --overwrite (overwrite=True) to replace it")
    dca = resolved_dca_block(dca)

    plans_manager = PlansManager(plans)
    replaced = plans_manager.get_configuration(name) if name in configurations else None
    source_manager = plans_manager.get_configuration(source_configuration)
    source = source_manager.configuration["architecture"]
    if source["network_class_name"] == DCA_NETWORK_CLASS_NAME:
        raise ValueError(f"configuration {source_configuration!r} already uses DCA; use a stock one as the source")
    architecture = {
        "network_class_name": DCA_NETWORK_CLASS_NAME,
        "arch_kwargs": {
            "base_network_class_name": source["network_class_name"],
            **source["arch_kwargs"],
            "dca": dca,
        },
        "_kw_requires_import": source["_kw_requires_import"],
    }
    _check_builds(architecture)
    configuration = {"inherits_from": source_configuration, "architecture": architecture}
    previous_stage = source_manager.previous_stage_name
    if replaced is not None:
        # nnU-Net's inheritance: the source's resolved settings, updated with the configuration's own
        _check_trained_folds_keep_their_configuration(plans_file, name, replaced.configuration,
                                                      {**source_manager.configuration, **configuration})
        _leave_old_previous_stage(plans_manager, configurations, name, replaced.previous_stage_name, previous_stage)
    configurations[name] = configuration
    if previous_stage is not None:
        # the resolved list, inherited entries included, goes into the previous stage's own dict: a parent it
        # inherits next_stage from stays as it is, and so do the other configurations inheriting from that parent
        next_stages = plans_manager.get_configuration(previous_stage).next_stage_names or []
        if name not in next_stages:
            configurations[previous_stage]["next_stage"] = [*next_stages, name]
    _check_every_configuration_resolves(plans, name)
    _write_json_atomically(plans, plans_file)
    return name


def _check_builds(architecture: dict) -> None:
    # settings that fit only some networks (heads must divide each stage's channels, one value per stage) fail
    # now rather than when training starts. The meta device allocates nothing: this takes milliseconds.
    # The channel counts of the input and the output do not reach DCA, so any will do.
    # The networks' modules are imported first, off the meta device: under it, torch 2.8 fails to import
    # torchvision, which Primus imports through timm.
    for class_path in (architecture["network_class_name"], architecture["arch_kwargs"].get("base_network_class_name")):
        if class_path:
            pydoc.locate(class_path)
    try:
        with torch.device("meta"):
            get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                   architecture["_kw_requires_import"], input_channels=1, output_channels=2,
                                   allow_init=False)
    except TypeError as e:  # DCAUNet's refusal of a network without U-Net skips, e.g. Primus
        raise ValueError(f"{e} Pick a U-Net configuration as the source (-c).") from e


def trained_model_folders(plans_file: str, configuration: str) -> list[str]:
    """The model folders of `configuration` in nnUNet_results, any trainer, with a fold holding a checkpoint.

    The dataset and the plans identifier are those of `plans_file`'s path, as nnUNetv2_train maps them
    (nnUNet_preprocessed/DATASET/PLANS.json -> nnUNet_results/DATASET/TRAINER__PLANS__CONFIGURATION).
    Nothing is found where nnUNet_results is not set: nnU-Net trains nowhere then.
    """
    # read at the call, as nnunet_dca.folders does: the cli and tests export it after nnunetv2's import
    results = os.environ.get("nnUNet_results")
    if not results:
        return []
    dataset_results = join(results, os.path.basename(os.path.dirname(os.path.abspath(plans_file))))
    if not isdir(dataset_results):
        return []
    plans_identifier = os.path.splitext(os.path.basename(plans_file))[0]
    # nnU-Net's model folder name with the trainer left out: any trainer's folder ends with it
    suffix = convert_trainer_plans_config_to_identifier("", plans_identifier, configuration)
    models = subdirs(dataset_results, suffix=suffix, sort=True)
    return [model for model in models if any(isfile(join(fold, checkpoint))
                                             for fold in subdirs(model, prefix="fold_") for checkpoint in CHECKPOINTS)]


def _check_trained_folds_keep_their_configuration(plans_file: str, name: str, replaced: dict, written: dict) -> None:
    # the resolved configurations, not their own dicts: a new source changes the patch size, spacing, network, ...;
    # inherits_from only names where the settings come from
    changed = sorted(key for key in replaced.keys() | written.keys()
                     if key != "inherits_from" and replaced.get(key) != written.get(key))
    if not changed:
        return
    models = trained_model_folders(plans_file, name)
    if models:
        raise FileExistsError(f"configuration {name!r} has trained folds in {', '.join(models)}, and this "
                              f"--overwrite would change its {', '.join(changed)}, which those models were trained "
                              f"with; nothing was written: add the new settings under another name (--name)")


def _leave_old_previous_stage(plans_manager: PlansManager, configurations: dict, name: str,
                              old_previous_stage: str | None, previous_stage: str | None) -> None:
    # a cascade configuration replaced by one of another source: its old previous stage no longer exports
    # segmentations for it. The list goes into that stage's own dict, as it was added.
    if old_previous_stage in (None, previous_stage) or old_previous_stage not in configurations:
        return
    next_stages = plans_manager.get_configuration(old_previous_stage).next_stage_names or []
    remaining = [stage for stage in next_stages if stage != name]
    if remaining:
        configurations[old_previous_stage]["next_stage"] = remaining
    else:
        configurations[old_previous_stage].pop("next_stage", None)


def _check_every_configuration_resolves(plans: dict, name: str) -> None:
    # replacing a configuration closes an inheritance cycle if the source inherits from it, and nnU-Net would find
    # that only when a later command resolves the configuration
    plans_manager = PlansManager(plans)
    for configuration in plans["configurations"]:
        try:
            plans_manager.get_configuration(configuration)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"configuration {configuration!r} would not resolve with {name!r} written ({e}); "
                             f"nothing was written: pick another name") from e


def _write_json_atomically(obj: Any, path: str) -> None:
    # a temp file in the same folder and os.replace: readers see the old file or the new one, never a partial one
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temp_path = tempfile.mkstemp(dir=folder, prefix=".", suffix=".json.tmp")
    try:
        with os.fdopen(descriptor, "w") as f:
            json.dump(obj, f, indent=4, sort_keys=False)  # nnU-Net's own layout for plans files
        os.chmod(temp_path, stat.S_IMODE(os.stat(path).st_mode))  # mkstemp creates 0600
        os.replace(temp_path, path)
    except BaseException:
        os.unlink(temp_path)
        raise


def _plans_identifiers(dataset_folder: str) -> list[str]:
    if not os.path.isdir(dataset_folder):
        return []
    not_plans = {"dataset.json", "dataset_fingerprint.json", "splits_final.json"}
    return sorted(f[:-len(".json")] for f in os.listdir(dataset_folder) if f.endswith(".json") and f not in not_plans)
