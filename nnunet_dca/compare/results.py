"""What nnU-Net wrote for each fold of a study: validation Dice per case, the training curves, the cost.

Everything comes from nnU-Net's own files in the fold folder: `validation/summary.json` (written by
nnunetv2.evaluation.evaluate_predictions.compute_metrics_on_folder after training), the checkpoint's 'logging'
(the lists behind progress.png) and 'network_weights', and `debug.json`. nnU-Net logs no GPU memory in any of
them, so none is read here.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from nnunet_dca.compare.study import CHECKPOINT_FINAL, CHECKPOINT_LATEST, Run, StudyError

if TYPE_CHECKING:
    from nnunet_dca.compare.study import Study

COMPLETE, TRAINING, MISSING = "complete", "training", "missing"
SUMMARY = Path("validation") / "summary.json"
DEBUG = "debug.json"
# a state_dict holds BatchNorm's running statistics beside the parameters; they are not trained
BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


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

    state: 'complete' (validation/summary.json exists), 'training' (the fold folder exists, no summary yet:
    training, validating or stopped) or 'missing' (no fold folder). Label keys are summary.json's ('1', or
    '(1, 2)' for a region).
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
        """Each case's Dice for one label, or for label None the case's overall Dice: the mean over the labels
        whose Dice is defined, as nnU-Net's foreground_mean leaves undefined (NaN) Dice out; NaN if none is."""
        if label is not None:
            return {case: dice[label] for case, dice in self.case_dice.items()}
        return {case: nanmean(list(dice.values())) for case, dice in self.case_dice.items()}


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


def nanmean(values: list[float]) -> float:
    """The mean of the values that are not NaN; NaN (without numpy's warning) when all are."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if values else float("nan")


def read_fold(run: Run) -> FoldResult:
    """Reads what nnU-Net wrote for one run."""
    summary_file = run.fold_folder / SUMMARY
    if summary_file.is_file():
        state = COMPLETE
    else:
        state = TRAINING if run.fold_folder.is_dir() else MISSING
    dataset_json_file = run.model_folder / "dataset.json"
    dataset_json = _load_json(dataset_json_file) if dataset_json_file.is_file() else {}
    case_dice, mean_dice, foreground_mean = {}, {}, None
    if state == COMPLETE:
        case_dice, mean_dice, foreground_mean = _read_summary(summary_file, dataset_json, run)
    checkpoint_file = next((run.fold_folder / name for name in (CHECKPOINT_FINAL, CHECKPOINT_LATEST)
                            if (run.fold_folder / name).is_file()), None)
    curves, parameters = _read_checkpoint(checkpoint_file) if checkpoint_file else (None, None)
    debug_file = run.fold_folder / DEBUG
    debug = _load_json(debug_file) if debug_file.is_file() else {}
    return FoldResult(run=run, state=state, case_dice=case_dice, mean_dice=mean_dice,
                      foreground_mean_dice=foreground_mean, label_names=_label_names(dataset_json), curves=curves,
                      checkpoint=checkpoint_file.name if checkpoint_file else None, parameters=parameters,
                      device=debug.get("gpu_name") or debug.get("device"))


def collect(study: Study) -> list[ConfigurationResults]:
    """Every run of the study read, per dataset x configuration. Raises StudyError when two trainers validated
    different cases in a fold: their splits differ, so their cases cannot be paired."""
    collected = []
    for dataset in study.datasets:
        for configuration in study.configurations:
            trainers = {trainer: [read_fold(run) for run in study.runs_of(dataset, configuration, trainer)]
                        for trainer in study.trainers}
            results = ConfigurationResults(dataset, configuration, tuple(study.folds), trainers)
            _check_same_cases(results)
            collected.append(results)
    return collected


def _check_same_cases(results: ConfigurationResults) -> None:
    for index, fold in enumerate(results.folds):
        cases = {trainer: set(folds[index].case_dice) for trainer, folds in results.trainers.items()
                 if folds[index].state == COMPLETE}
        if not cases:
            continue
        first, first_cases = next(iter(cases.items()))
        differing = [trainer for trainer, trainer_cases in cases.items() if trainer_cases != first_cases]
        if differing:
            example = sorted(first_cases ^ cases[differing[0]])[0]
            raise StudyError(f"trainers with different splits: {results.dataset} {results.configuration} fold {fold}: "
                             f"{', '.join(differing)} validated other cases than {first} (e.g. {example}); train "
                             f"all trainers on the same splits_final.json to pair their cases")


def _read_summary(summary_file: Path, dataset_json: dict, run: Run
                  ) -> tuple[dict[str, dict[str, float]], dict[str, float], float]:
    summary = _load_json(summary_file)
    file_ending = dataset_json.get("file_ending")
    if not file_ending:
        raise StudyError(f"{run.model_folder / 'dataset.json'} gives no file_ending, so the cases of "
                         f"{summary_file} cannot be named; nnU-Net copies dataset.json there when training starts")
    case_dice = {}
    for case in summary["metric_per_case"]:
        name = Path(case["reference_file"]).name
        if not name.endswith(file_ending):
            raise StudyError(f"{summary_file}: reference file {name} does not end with dataset.json's file_ending "
                             f"{file_ending}")
        case_dice[name[:-len(file_ending)]] = {label: float(metrics["Dice"])
                                              for label, metrics in case["metrics"].items()}
    mean_dice = {label: float(metrics["Dice"]) for label, metrics in summary["mean"].items()}
    return case_dice, mean_dice, float(summary["foreground_mean"]["Dice"])


def _read_checkpoint(checkpoint_file: Path) -> tuple[Curves, int]:
    try:
        # nnU-Net pickles more than tensors into its checkpoints and loads them the same way
        checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated file raises anything from RuntimeError to UnpicklingError
        reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line
        raise StudyError(f"{checkpoint_file} cannot be read ({reason}); if a training is writing "
                         f"it right now, run the report again in a moment") from e
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


def _load_json(path: Path) -> dict:
    with open(path) as file:
        return json.load(file)
