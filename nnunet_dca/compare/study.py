"""What a comparison covers: datasets x configurations x trainers x folds, and each fold's place in nnU-Net's
folders."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_dca.folders import FolderError, find_dataset_name, folder_from_environment
from nnunet_dca.plans import CHECKPOINT_FINAL, CHECKPOINT_LATEST, load_plans
from nnunet_dca.trainers import trainer_dir
from nnunet_dca.warm_start import find_trainer_class

SUMMARY = Path("validation") / "summary.json"  # in a fold folder; nnU-Net's validation writes it last
# A run's state, from its fold folder. nnUNetv2_train writes checkpoint_final.pth when training ends, then validates
# and writes validation/summary.json: a validation cut off (Ctrl-C, a SLURM time limit, out of memory) leaves the
# final checkpoint without a summary.
DONE = "done"  # validation/summary.json exists; so too in results copied without their .pth files
VALIDATE = "validate"  # checkpoint_final.pth without summary: nnUNetv2_train --val validates it
RESUME = "resume"  # checkpoint_latest.pth only: nnUNetv2_train --c resumes it
FRESH = "fresh"  # neither: nnUNetv2_train starts it
# the nnUNetv2_train option that takes a run on from where it stopped
CONTINUE_OPTIONS = {VALIDATE: "--val", RESUME: "--c"}
DEFAULT_PLANS = "nnUNetPlans"
# nnU-Net's cross-validation when the dataset has no splits_final.json: nnUNetTrainer.do_split writes 5 splits
DEFAULT_SPLITS = 5
# What must be the same in a model folder's plans.json and the plans a comparison trains with now: what defines
# the data a fold trains and is validated on (preprocessed folder, spacing, normalization, resampling both ways)
# and the network's input (patch size, axis order). Batch size and architecture are left out on purpose: trainers
# change them by design (nnU-Net's Primus trainers set batch_size, nnUNetTrainerDCA builds DCA into the plans'
# network and records it as dca_resolved, and checks its own DCA settings against the model folder itself).
CONFIGURATION_KEYS_THAT_MUST_MATCH = (
    "data_identifier", "preprocessor_name", "spacing", "patch_size", "normalization_schemes", "use_mask_for_norm",
    "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg", "resampling_fn_seg_kwargs",
    "resampling_fn_probabilities", "resampling_fn_probabilities_kwargs",
)
PLANS_KEYS_THAT_MUST_MATCH = ("transpose_forward",)


class StudyError(ValueError):
    """A comparison that cannot run as asked; the message is one line that names the problem and the fix."""


@dataclass(frozen=True)
class Run:
    """One training of nnU-Net: a dataset, configuration, trainer and fold under one plans identifier."""

    results: Path  # nnUNet_results
    dataset: str  # nnU-Net's dataset name, e.g. Dataset004_Hippocampus
    configuration: str
    trainer: str
    plans: str
    fold: int

    @property
    def model_folder(self) -> Path:
        """nnU-Net's TRAINER__PLANS__CONFIGURATION folder, as nnunetv2's get_output_folder names it."""
        return self.results / self.dataset / f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def fold_folder(self) -> Path:
        return self.model_folder / f"fold_{self.fold}"

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.configuration} {self.trainer} fold {self.fold}"

    @property
    def state(self) -> str:
        """DONE, VALIDATE, RESUME or FRESH, as the fold folder is now."""
        if (self.fold_folder / SUMMARY).is_file():
            return DONE
        if (self.fold_folder / CHECKPOINT_FINAL).is_file():
            return VALIDATE
        if (self.fold_folder / CHECKPOINT_LATEST).is_file():
            return RESUME
        return FRESH

    def train_arguments(self, device: str | None = None) -> list[str]:
        """The arguments of nnUNetv2_train for this run, with --npz (the ensembling step needs the
        probabilities) and without the state's CONTINUE_OPTIONS, which the callers add as they find the run."""
        arguments = [self.dataset, self.configuration, str(self.fold), "-tr", self.trainer, "-p", self.plans, "--npz"]
        return arguments + (["-device", device] if device else [])


@dataclass(frozen=True)
class Study:
    """What `nnunet-dca compare` covers: every dataset x configuration x trainer x fold under one plans identifier.
    The first trainer is the baseline the others are compared with."""

    results: Path  # nnUNet_results
    preprocessed: Path  # nnUNet_preprocessed
    datasets: tuple[str, ...]  # nnU-Net's dataset names, e.g. Dataset004_Hippocampus
    configurations: tuple[str, ...]
    trainers: tuple[str, ...]
    folds: tuple[int, ...]
    plans: str = DEFAULT_PLANS

    @property
    def baseline(self) -> str:
        return self.trainers[0]

    def runs(self) -> list[Run]:
        """Every training of the study, ordered by dataset, configuration, trainer and fold."""
        return [run for dataset in self.datasets for configuration in self.configurations
                for trainer in self.trainers for run in self.runs_of(dataset, configuration, trainer)]

    def runs_of(self, dataset: str, configuration: str, trainer: str) -> list[Run]:
        """The study's folds of one model folder."""
        return [Run(self.results, dataset, configuration, trainer, self.plans, fold) for fold in self.folds]

    def plans_file(self, dataset: str) -> Path:
        """The plans of a dataset: nnUNet_preprocessed's if there are any, else those nnU-Net kept in a model folder
        of these plans (results copied from a cluster, to report on, have no nnUNet_preprocessed next to them)."""
        preprocessed = self.preprocessed / dataset / f"{self.plans}.json"
        if preprocessed.is_file():
            return preprocessed
        kept = sorted((self.results / dataset).glob(f"*__{self.plans}__*/plans.json"))
        if kept:
            return kept[0]
        raise StudyError(f"no plans for {dataset}: neither {preprocessed} nor a model folder's plans.json under "
                         f"{self.results / dataset} exists; run {_plan_and_preprocess_command(self, dataset)}")


def resolve_study(datasets: Sequence[str | int], configurations: Sequence[str], trainers: Sequence[str],
                  folds: Sequence[int], plans: str = DEFAULT_PLANS, results: Path | str | None = None,
                  preprocessed: Path | str | None = None) -> Study:
    """The study of these datasets (ids or names), configurations, trainers (the baseline first) and folds, checked
    against nnU-Net's folders: nnUNet_results and nnUNet_preprocessed as exported at the call unless given.

    Raises StudyError for an unknown dataset, configuration or trainer, a fold outside the dataset's splits, fewer
    than two trainers, anything given twice, and a model folder trained with other plans. Reads only; whether the
    preprocessed data for training is there is check_preprocessed's question.
    """
    try:
        results = Path(results) if results is not None else folder_from_environment("nnUNet_results")
        preprocessed = (Path(preprocessed) if preprocessed is not None
                        else folder_from_environment("nnUNet_preprocessed"))
        if len(trainers) < 2:
            raise StudyError(f"compare needs at least two trainers, the baseline first (e.g. --trainers "
                             f"nnUNetTrainer nnUNetTrainerDCA); got {' '.join(trainers) or 'none'}")
        # nnUNet_raw is not searched: a dataset that is only there is neither planned nor trained
        names = [find_dataset_name(dataset, {"nnUNet_preprocessed": preprocessed, "nnUNet_results": results},
                                   f"a dataset planned there (nnUNetv2_plan_and_preprocess -d "
                                   f"{int(dataset) if str(dataset).isdigit() else 'ID'})")
                 for dataset in datasets]
    except FolderError as e:
        raise StudyError(str(e)) from e
    for what, values in (("dataset", names), ("configuration", configurations), ("trainer", trainers),
                         ("fold", folds)):
        _refuse_duplicates(what, list(values))
    study = Study(results, preprocessed, tuple(names), tuple(configurations), tuple(trainers),
                  tuple(int(fold) for fold in folds), plans)
    for dataset in study.datasets:
        plans_file = study.plans_file(dataset)
        _check_configurations(study, load_plans_or_refuse(plans_file), plans_file)
        _check_folds(study, dataset)
        for configuration in study.configurations:
            for trainer in study.trainers:
                check_model_folder_plans(study.runs_of(dataset, configuration, trainer)[0], plans_file)
    for trainer in study.trainers:  # last: nnU-Net's trainer search imports every trainer module (seconds)
        _check_trainer(trainer)
    return study


def check_preprocessed(study: Study) -> None:
    """StudyError unless nnUNetv2_train finds all it needs in nnUNet_preprocessed for every dataset and
    configuration: the plans file, dataset.json, and the configuration's preprocessed data folder (its
    data_identifier) with cases in it. The message names the nnU-Net command that makes what is missing."""
    for dataset in study.datasets:
        folder = study.preprocessed / dataset
        for required in (folder / f"{study.plans}.json", folder / "dataset.json"):
            if not required.is_file():
                raise StudyError(f"{dataset} is not preprocessed for training ({required} does not exist): run "
                                 f"{_plan_and_preprocess_command(study, dataset)}")
        plans = PlansManager(load_plans_or_refuse(folder / f"{study.plans}.json"))
        for configuration in study.configurations:
            data = folder / plans.get_configuration(configuration).data_identifier
            # nnU-Net's preprocessing writes one .pkl of properties per case, whichever array format it uses
            if not any(data.glob("*.pkl")):
                plans_option = "" if study.plans == DEFAULT_PLANS else f" -plans_name {study.plans}"
                raise StudyError(f"no preprocessed data for {dataset} {configuration} in {data}: run "
                                 f"nnUNetv2_preprocess -d {convert_dataset_name_to_id(dataset)}{plans_option} "
                                 f"-c {configuration}")


def check_model_folder_plans(run: Run, plans_file: Path) -> None:
    """StudyError if the run's model folder keeps a plans.json that differs from `plans_file` in what defines the
    data and the network's input (CONFIGURATION_KEYS_THAT_MUST_MATCH, PLANS_KEYS_THAT_MUST_MATCH): its folds and
    those trained now would be different experiments. A model folder without plans.json (nothing trained) passes."""
    kept = run.model_folder / "plans.json"
    if not kept.is_file() or kept.samefile(plans_file):
        return
    there = _what_must_match(load_plans_or_refuse(kept), run.configuration)
    now = _what_must_match(load_plans_or_refuse(plans_file), run.configuration)
    differences = [f"{key}: {json.dumps(there[key])} there, {json.dumps(now[key])} now"
                   for key in now if there[key] != now[key]]
    if differences:
        raise StudyError(f"results in {run.model_folder} were trained with other plans than {plans_file} "
                         f"({'; '.join(differences)}): compare with the plans they were trained with (-p), or move "
                         f"that folder out of nnUNet_results to train it anew")


def load_plans_or_refuse(plans_file: Path) -> dict:
    """The plans in `plans_file`, or StudyError saying why they cannot be read."""
    try:
        return load_plans(str(plans_file))
    except ValueError as e:  # load_plans' messages already say what to do
        raise StudyError(str(e)) from e


def _plan_and_preprocess_command(study: Study, dataset: str) -> str:
    command = (f"nnUNetv2_plan_and_preprocess -d {convert_dataset_name_to_id(dataset)} "
               f"-c {' '.join(study.configurations)}")
    # nnU-Net's planners name the plans they write; plans other than the default planner's come from another one
    if study.plans != DEFAULT_PLANS:
        command += f" -pl PLANNER (the planner that writes {study.plans}.json)"
    return command


def _refuse_duplicates(what: str, values: list) -> None:
    repeated = [value for i, value in enumerate(values) if value in values[:i]]
    if repeated:
        raise StudyError(f"{what} {repeated[0]} is given twice: give each {what} once")


def _check_configurations(study: Study, plans: dict, plans_file: Path) -> None:
    available = list(plans["configurations"])
    for configuration in study.configurations:
        if configuration not in available:
            raise StudyError(f"unknown configuration {configuration!r}: {plans_file} has {', '.join(available)}; "
                             f"pick from those (-c), or add it to the plans (nnunet-dca add-config for a DCA one)")


def _check_folds(study: Study, dataset: str) -> None:
    splits_file = study.preprocessed / dataset / "splits_final.json"
    if splits_file.is_file():
        splits, source = len(load_json(str(splits_file))), str(splits_file)
    else:
        splits, source = DEFAULT_SPLITS, "nnU-Net's default cross-validation"
    outside = [fold for fold in study.folds if not 0 <= fold < splits]
    if outside:
        # nnU-Net would train a fold past the splits on a random 80:20 split, which no other fold shares
        raise StudyError(f"fold {outside[0]} is out of range for {dataset}: {source} has {splits} splits; give "
                         f"folds from 0 to {splits - 1} (--folds)")


def _check_trainer(trainer: str) -> None:
    try:
        find_trainer_class(trainer)
    except RuntimeError as e:
        cause = e.__cause__
        # nnU-Net's finder raises RuntimeError for a name it does not find; anything else is a trainer module's error
        outcome = ("finds no such class" if isinstance(cause, RuntimeError)
                   else "fails with " + " ".join(f"{type(cause).__name__}: {cause}".split()))
        raise StudyError(f"unknown trainer {trainer!r}: nnU-Net's trainer search (nnunetv2's trainers, then "
                         f"nnUNet_extTrainer={os.environ.get('nnUNet_extTrainer', '(unset)')}) {outcome}; check the "
                         f"name, or add the folder of its .py file to nnUNet_extTrainer (nnunet-dca's trainers are "
                         f"in {trainer_dir()})") from e


def _what_must_match(plans: dict, configuration: str) -> dict[str, Any]:
    # PlansManager resolves inherits_from, so a change in a parent configuration counts too
    resolved = (PlansManager(plans).get_configuration(configuration).configuration
                if configuration in plans["configurations"] else {})
    return {**{key: plans.get(key) for key in PLANS_KEYS_THAT_MUST_MATCH},
            **{key: resolved.get(key) for key in CONFIGURATION_KEYS_THAT_MUST_MATCH}}
