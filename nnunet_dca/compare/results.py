"""What nnU-Net wrote for each fold of a study: validation Dice per case, the training curves, the cost.

Everything comes from nnU-Net's own files in the fold folder: `validation/summary.json` (written by
nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder after training), the checkpoint's 'logging'
(the lists behind progress.png) and 'network_weights', and `debug.json`. nnU-Net logs no GPU memory in any of
them, so none is read here.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from nnunet_dca.compare.study import (
    CHECKPOINT_FINAL,
    CHECKPOINT_LATEST,
    CONTINUE_OPTIONS,
    DONE,
    SUMMARY,
    VALIDATE,
    Run,
    StudyError,
)

if TYPE_CHECKING:
    from nnunet_dca.compare.study import Study

COMPLETE, NOT_VALIDATED, TRAINING, MISSING = "complete", "not validated", "training", "missing"
DEBUG = "debug.json"
DATASET_JSON = "dataset.json"
# a state_dict holds BatchNorm's running statistics beside the parameters; they are not trained
BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")
# nnU-Net's Dice is NaN where reference and prediction are both empty: a correct empty call. The paired comparison
# counts it as 1, as BraTS does, so that a trainer predicting voxels there (Dice 0) loses the case instead of the
# case being left out, and both trainers' overall Dice of a case average the same labels.
EMPTY_CASE_DICE = 1.0


@dataclass(frozen=True)
class Curves:
    """One training's per-epoch log, the data of nnU-Net's progress.png (the checkpoint's 'logging')."""

    pseudo_dice: list[float]  # mean_fg_dice: Dice of the validation patches, all voxels of the epoch pooled
    pseudo_dice_ema: list[float]  # ema_fg_dice: nnU-Net's moving average of it (0.9 old, 0.1 new)
    train_loss: list[float]
    val_loss: list[float]
    epoch_seconds: list[float]

    @property
    def epochs(self) -> int:
        return len(self.epoch_seconds)


@dataclass(frozen=True)
class FoldResult:
    """One fold of one trainer: its state and, as far as nnU-Net has written them, its Dice, curves and cost.

    state: COMPLETE (validation/summary.json exists), NOT_VALIDATED (checkpoint_final.pth without summary: its
    validation was cut off), TRAINING (the fold folder exists, no final checkpoint yet: training or stopped) or
    MISSING (no fold folder). Label keys are summary.json's ('1', or '(1, 2)' for a region).
    """

    run: Run
    state: str
    case_dice: dict[str, dict[str, float]]  # case -> label -> Dice; NaN where reference and prediction are empty
    mean_dice: dict[str, float]  # label -> nnU-Net's mean over the cases (NaN cases left out)
    foreground_mean_dice: float | None  # nnU-Net's foreground_mean: the mean of mean_dice over the labels
    label_names: dict[str, str]  # label -> its name in dataset.json
    curves: Curves | None
    checkpoint: str | None  # the checkpoint file the curves and parameters come from
    parameters: int | None
    device: str | None  # debug.json's GPU name, or its device where there is no GPU

    def case_values(self, label: str | None = None) -> dict[str, float]:
        """Each case's Dice as the paired comparison counts it, NaN (reference and prediction both empty) as
        EMPTY_CASE_DICE: for one label, or for label None the case's overall Dice, the mean over every label."""
        counted = {case: {key: EMPTY_CASE_DICE if math.isnan(value) else value for key, value in dice.items()}
                   for case, dice in self.case_dice.items()}
        if label is not None:
            return {case: dice[label] for case, dice in counted.items()}
        return {case: float(np.mean(list(dice.values()))) for case, dice in counted.items()}


@dataclass(frozen=True)
class ConfigurationResults:
    """Every requested fold of every trainer for one dataset and configuration; the first trainer is the baseline."""

    dataset: str
    configuration: str
    folds: tuple[int, ...]
    trainers: dict[str, list[FoldResult]]  # trainer -> its results in the order of folds

    @property
    def baseline(self) -> str:
        return next(iter(self.trainers))

    @property
    def label_names(self) -> dict[str, str]:
        """Every label any complete fold was scored on, in summary.json's order."""
        names: dict[str, str] = {}
        for results in self.trainers.values():
            for result in results:
                names.update({key: result.label_names.get(key, key) for key in result.mean_dice})
        return names


def read_fold(run: Run) -> FoldResult:
    """Reads what nnU-Net wrote for one run. Raises StudyError, naming the file and what to do, for a file nnU-Net
    writes that cannot be read or lacks what nnU-Net puts in it."""
    state = _report_state(run)
    dataset_json = _read_dataset_json(run)
    case_dice, mean_dice, foreground_mean = _read_summary(run, dataset_json) if state == COMPLETE else ({}, {}, None)
    checkpoint_file = next((run.fold_folder / name for name in (CHECKPOINT_FINAL, CHECKPOINT_LATEST)
                            if (run.fold_folder / name).is_file()), None)
    curves, parameters = _read_checkpoint(checkpoint_file) if checkpoint_file else (None, None)
    debug_file = run.fold_folder / DEBUG
    debug = _read_json(debug_file, "nnU-Net writes it when a training starts: run the report again once it has, or "
                                   "remove it (the report then names no device)") if debug_file.is_file() else {}
    return FoldResult(run=run, state=state, case_dice=case_dice, mean_dice=mean_dice,
                      foreground_mean_dice=foreground_mean, label_names=_label_names(dataset_json), curves=curves,
                      checkpoint=checkpoint_file.name if checkpoint_file else None, parameters=parameters,
                      device=debug.get("gpu_name") or debug.get("device"))


def collect(study: Study) -> list[ConfigurationResults]:
    """Every run of the study read, per dataset x configuration. Raises StudyError as check_same_splits does, and
    for a file nnU-Net writes that cannot be read."""
    check_same_splits(study)
    collected = []
    for dataset in study.datasets:
        for configuration in study.configurations:
            trainers = {trainer: [read_fold(run) for run in study.runs_of(dataset, configuration, trainer)]
                        for trainer in study.trainers}
            collected.append(ConfigurationResults(dataset, configuration, tuple(study.folds), trainers))
    return collected


def check_same_splits(study: Study) -> None:
    """StudyError when two trainers validated different cases in a fold: their splits differ, so their cases
    cannot be paired. Reads the validated folds' summaries only, no checkpoint: light enough to run before any
    training as well as before the report."""
    validated: dict[tuple[str, str, int], dict[str, set[str]]] = defaultdict(dict)
    for run in study.runs():
        if run.state == DONE:
            cases = _read_summary(run, _read_dataset_json(run))[0]
            validated[run.dataset, run.configuration, run.fold][run.trainer] = set(cases)
    for (dataset, configuration, fold), cases in validated.items():
        first, first_cases = next(iter(cases.items()))
        differing = [trainer for trainer, trainer_cases in cases.items() if trainer_cases != first_cases]
        if differing:
            example = sorted(first_cases ^ cases[differing[0]])[0]
            raise StudyError(f"trainers with different splits: {dataset} {configuration} fold {fold}: "
                             f"{', '.join(differing)} validated other cases than {first} (e.g. {example}); train "
                             f"all trainers on the same splits_final.json to pair their cases")


def _report_state(run: Run) -> str:
    state = run.state
    if state == DONE:
        return COMPLETE
    if state == VALIDATE:
        return NOT_VALIDATED
    return TRAINING if run.fold_folder.is_dir() else MISSING


def _read_dataset_json(run: Run) -> dict:
    """The model folder's dataset.json, which nnU-Net copies there when a training starts; {} before."""
    path = run.model_folder / DATASET_JSON
    if not path.is_file():
        return {}
    return _read_json(path, f"nnU-Net copies it there from nnUNet_preprocessed/{run.dataset}/{DATASET_JSON} when a "
                            f"training starts: copy that file there again")


def _read_summary(run: Run, dataset_json: dict) -> tuple[dict[str, dict[str, float]], dict[str, float], float]:
    """summary.json's Dice per case (case -> label -> Dice), per label over the cases, and its foreground_mean."""
    summary_file = run.fold_folder / SUMMARY
    fix = (f"run the report again once the validation has written it, or validate again with nnUNetv2_train "
           f"{' '.join(run.train_arguments())} {CONTINUE_OPTIONS[VALIDATE]}")
    summary = _read_json(summary_file, fix)
    file_ending = dataset_json.get("file_ending")
    if not file_ending:
        raise StudyError(f"{run.model_folder / DATASET_JSON} gives no file_ending, so the cases of "
                         f"{summary_file} cannot be named; nnU-Net copies dataset.json there when training starts")
    with _entries_of(summary_file, fix):
        case_dice = {}
        for case in summary["metric_per_case"]:
            name = Path(case["reference_file"]).name
            if not name.endswith(file_ending):
                raise StudyError(f"{summary_file}: reference file {name} does not end with dataset.json's "
                                 f"file_ending {file_ending}")
            case_dice[name[:-len(file_ending)]] = {label: float(metrics["Dice"])
                                                  for label, metrics in case["metrics"].items()}
        mean_dice = {label: float(metrics["Dice"]) for label, metrics in summary["mean"].items()}
        return case_dice, mean_dice, float(summary["foreground_mean"]["Dice"])


def _read_checkpoint(checkpoint_file: Path) -> tuple[Curves, int]:
    fix = ("if a training is writing it right now, run the report again in a moment; otherwise nnUNetv2_train did not "
           "write it: move it out of the fold folder")
    try:
        # nnU-Net pickles more than tensors into its checkpoints and loads them the same way
        checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated file raises anything from RuntimeError to UnpicklingError
        raise StudyError(f"{checkpoint_file} cannot be read ({_one_line(e)}); {fix}") from e
    with _entries_of(checkpoint_file, fix):
        logging = checkpoint["logging"]
        # a checkpoint written mid-epoch has some lists one entry longer; progress.png plots the common length too
        epochs = min(len(logging[key]) for key in ("mean_fg_dice", "ema_fg_dice", "train_losses", "val_losses",
                                                  "epoch_start_timestamps", "epoch_end_timestamps"))
        curves = Curves(
            pseudo_dice=[float(value) for value in logging["mean_fg_dice"][:epochs]],
            pseudo_dice_ema=[float(value) for value in logging["ema_fg_dice"][:epochs]],
            train_loss=[float(value) for value in logging["train_losses"][:epochs]],
            val_loss=[float(value) for value in logging["val_losses"][:epochs]],
            epoch_seconds=[float(end - start) for start, end in zip(logging["epoch_start_timestamps"][:epochs],
                                                                    logging["epoch_end_timestamps"][:epochs])])
        parameters = sum(weight.numel() for key, weight in checkpoint["network_weights"].items()
                         if not key.endswith(BUFFER_SUFFIXES))
        return curves, parameters


def _label_names(dataset_json: dict) -> dict[str, str]:
    """dataset.json's labels under summary.json's keys: str(label) for a label, str(tuple) for a region."""
    names = {}
    for name, value in dataset_json.get("labels", {}).items():
        key = str(tuple(value)) if isinstance(value, (list, tuple)) else str(value)
        names[key] = name
    return names


def _read_json(path: Path, fix: str) -> dict:
    """The JSON object in `path`, or StudyError naming the file and `fix`, what to do about it."""
    try:
        with open(path) as file:
            data = json.load(file)
    except ValueError as e:  # a truncated file, or one being written right now
        raise StudyError(f"{path} is no valid JSON ({_one_line(e)}): {fix}") from e
    if not isinstance(data, dict):
        raise StudyError(f"{path} holds a JSON {type(data).__name__}, where nnU-Net writes an object: {fix}")
    return data


@contextmanager
def _entries_of(path: Path, fix: str) -> Iterator[None]:
    """Turns what nnU-Net writes into `path` but is missing or malformed there into StudyError naming the file."""
    try:
        yield
    except StudyError:
        raise
    except KeyError as e:
        raise StudyError(f"{path} lacks {e}, which nnU-Net writes into it: {fix}") from e
    except (TypeError, ValueError, AttributeError) as e:
        raise StudyError(f"{path} holds something nnU-Net does not write ({_one_line(e)}): {fix}") from e


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())
