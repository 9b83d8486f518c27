"""The comparison report: nnU-Net's result folders read, the paired statistics, the figures, report.md and .json.

The fake nnUNet_results hold what nnU-Net writes, made by nnU-Net's own code: each fold's validation/summary.json
by compute_metrics_on_folder on tiny .nii.gz predictions and references written here, each checkpoint's logging
by nnU-Net's logger. Every number the report shows is checked against one recomputed here from the label arrays.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from matplotlib.image import imread
from nnunetv2.evaluation import evaluate_predictions
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.training.logging.nnunet_logger import MetaLogger
from scipy import stats
from torch import nn

from nnunet_dca.compare.report import write_report
from nnunet_dca.compare.results import COMPLETE, MISSING, NOT_VALIDATED, TRAINING, read_fold
from nnunet_dca.compare.statistics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, compare, describe_folds
from nnunet_dca.compare.study import Run, Study, StudyError

DATASET = "Dataset001_Toy"
CONFIGURATION = "2d"
PLANS = "nnUNetPlans"
LABELS = {"background": 0, "left": 1, "right": 2}
FILE_ENDING = ".nii.gz"
BASELINE, DCA, SHORT = "nnUNetTrainer", "nnUNetTrainerDCA", "nnUNetTrainerDCA_short"
FOLDS = (0, 1, 2, 3)
CASES_PER_FOLD = 4
# the share of voxels each trainer's predictions get wrong, per fold: DCA better in folds 0 and 1, worse in 2
NOISE = {BASELINE: (0.10, 0.10, 0.10, 0.10), DCA: (0.04, 0.05, 0.20), SHORT: (0.08,)}
EPOCHS = 6
EPOCH_SECONDS = {BASELINE: 10.0, DCA: 12.5, SHORT: 12.5}  # after a first epoch of 30 s (compilation)
EMPTY_RIGHT_CASE, SAME_CASE = "case_008", "case_001"  # no label 2 in the reference; DCA predicts as the baseline


def case_names(fold: int) -> list[str]:
    return [f"case_{index:03d}" for index in range(fold * CASES_PER_FOLD, (fold + 1) * CASES_PER_FOLD)]


def dice(reference: np.ndarray, prediction: np.ndarray, label: int) -> float:
    true, predicted = reference == label, prediction == label
    overlap, total = np.sum(true & predicted), np.sum(true) + np.sum(predicted)
    return float("nan") if total == 0 else 2 * overlap / total


@dataclass
class Toy:
    """The fake nnU-Net folders and the label arrays behind them."""

    root: Path
    study: Study
    references: dict[str, np.ndarray]
    predictions: dict[str, dict[str, np.ndarray]]  # trainer -> case -> prediction
    parameters: dict[str, int]

    def case_dice(self, trainer: str, case: str) -> dict[int, float]:
        return {label: dice(self.references[case], self.predictions[trainer][case], label) for label in (1, 2)}

    def counted(self, trainer: str, case: str) -> dict[int, float]:
        """The case's Dice per label as the paired comparison counts it: NaN (both empty) as 1."""
        return {label: 1.0 if math.isnan(value) else value for label, value in self.case_dice(trainer, case).items()}

    def overall(self, trainer: str, case: str) -> float:
        """The case's overall Dice in the paired comparison: the mean over both labels, NaN counted as 1."""
        return float(np.mean(list(self.counted(trainer, case).values())))


class _SerialPool:
    """compute_metrics_on_folder's process pool as a loop: nnU-Net's own code writes summary.json, without
    spawning interpreters for a few tiny images."""

    def __init__(self, processes: int) -> None:
        pass

    def __enter__(self) -> _SerialPool:
        return self

    def __exit__(self, *exception) -> None:
        return None

    def starmap(self, function, arguments):
        return list(itertools.starmap(function, arguments))


class _SerialContext:
    Pool = _SerialPool


def write_segmentation(array: np.ndarray, path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def make_reference(rng: np.random.Generator, with_right: bool) -> np.ndarray:
    reference = np.zeros((1, 16, 16), dtype=np.uint8)
    top = rng.integers(1, 5)
    reference[0, top:top + 8, 1:7] = 1
    if with_right:
        reference[0, top:top + 6, 9:15] = 2
    return reference


def make_prediction(rng: np.random.Generator, reference: np.ndarray, noise: float, may_add_right: bool) -> np.ndarray:
    prediction = reference.copy()
    wrong = rng.random(reference.shape) < noise
    labels = (0, 1, 2) if may_add_right else (0, 1)
    prediction[wrong] = rng.choice(labels, size=int(wrong.sum()))
    return prediction


def network(trainer: str) -> nn.Module:
    if trainer == BASELINE:
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4, affine=True), nn.Conv2d(4, 3, 1))
    # BatchNorm's running statistics are in the state_dict but are no parameters
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1))


def write_checkpoint(fold_folder: Path, trainer: str, name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logger = MetaLogger(str(fold_folder), resume=False)
    start = 1_700_000_000.0
    for epoch in range(EPOCHS):
        seconds = 30.0 if epoch == 0 else EPOCH_SECONDS[trainer] + rng.uniform(-0.5, 0.5)
        logger.log("epoch_start_timestamps", start, epoch)
        logger.log("lrs", 0.01, epoch)
        logger.log("train_losses", float(-0.1 * epoch + rng.normal(0, 0.01)), epoch)
        logger.log("val_losses", float(-0.08 * epoch + rng.normal(0, 0.01)), epoch)
        per_class = list(rng.uniform(0.3, 0.9, size=2))
        logger.log("mean_fg_dice", float(np.nanmean(per_class)), epoch)
        logger.log("dice_per_class_or_region", per_class, epoch)
        logger.log("epoch_end_timestamps", start + seconds, epoch)
        start += seconds + 1.0
    torch.save({"network_weights": network(trainer).state_dict(), "optimizer_state": {}, "grad_scaler_state": None,
                "logging": logger.get_checkpoint(), "_best_ema": None, "current_epoch": EPOCHS, "init_args": {},
                "trainer_name": trainer, "inference_allowed_mirroring_axes": (0, 1)}, fold_folder / name)


def write_debug_json(fold_folder: Path) -> None:
    # nnU-Net writes every value as a string
    debug = {"device": "cuda:0", "gpu_name": "NVIDIA H100 80GB HBM3", "torch_version": torch.__version__,
             "cudnn_version": "91002", "hostname": "node1", "num_epochs": str(EPOCHS)}
    (fold_folder / "debug.json").write_text(json.dumps(debug, indent=4, sort_keys=True))


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Toy:
    root = tmp_path_factory.mktemp("compare")
    results, gt = root / "nnUNet_results", root / "gt_segmentations"
    gt.mkdir()
    rng = np.random.default_rng(0)
    cases = [case for fold in FOLDS for case in case_names(fold)]
    references = {case: make_reference(rng, with_right=case != EMPTY_RIGHT_CASE) for case in cases}
    for case, reference in references.items():
        write_segmentation(reference, gt / f"{case}{FILE_ENDING}")
    predictions: dict[str, dict[str, np.ndarray]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate_predictions.multiprocessing, "get_context", lambda method: _SerialContext)
        for trainer, noise in NOISE.items():
            model_folder = results / DATASET / f"{trainer}__{PLANS}__{CONFIGURATION}"
            model_folder.mkdir(parents=True)
            (model_folder / "dataset.json").write_text(json.dumps(
                {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": len(cases),
                 "file_ending": FILE_ENDING}, indent=4))
            predictions[trainer] = {}
            for fold, fold_noise in enumerate(noise):
                validation = model_folder / f"fold_{fold}" / "validation"
                validation.mkdir(parents=True)
                for case in case_names(fold):
                    if trainer == DCA and case == SAME_CASE:
                        prediction = predictions[BASELINE][case]
                    else:
                        # the baseline finds no label 2 where the reference has none; DCA puts some there
                        may_add_right = not (trainer == BASELINE and case == EMPTY_RIGHT_CASE)
                        prediction = make_prediction(rng, references[case], fold_noise, may_add_right)
                        if trainer == DCA and case == EMPTY_RIGHT_CASE:
                            prediction[0, 0, 0] = 2
                    predictions[trainer][case] = prediction
                    write_segmentation(prediction, validation / f"{case}{FILE_ENDING}")
                evaluate_predictions.compute_metrics_on_folder(
                    str(gt), str(validation), str(validation / "summary.json"), SimpleITKIO(), FILE_ENDING,
                    [1, 2], None, num_processes=1)
                write_checkpoint(validation.parent, trainer, "checkpoint_final.pth", seed=10 * len(predictions) + fold)
                write_debug_json(validation.parent)
    # DCA's fold 3 is still training: a latest checkpoint, no validation yet; the short trainer's fold 1 was trained
    # but its validation cut off (a final checkpoint, no summary), its folds 2 and 3 never ran
    training = results / DATASET / f"{DCA}__{PLANS}__{CONFIGURATION}" / "fold_3"
    training.mkdir()
    write_checkpoint(training, DCA, "checkpoint_latest.pth", seed=99)
    not_validated = results / DATASET / f"{SHORT}__{PLANS}__{CONFIGURATION}" / "fold_1"
    not_validated.mkdir()
    write_checkpoint(not_validated, SHORT, "checkpoint_final.pth", seed=98)
    study = Study(results, root / "nnUNet_preprocessed", (DATASET,), (CONFIGURATION,), (BASELINE, DCA, SHORT),
                  FOLDS, PLANS)
    parameters = {trainer: sum(parameter.numel() for parameter in network(trainer).parameters()) for trainer in NOISE}
    return Toy(root, study, references, predictions, parameters)


@pytest.fixture(scope="module")
def report(toy: Toy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(toy.study, tmp_path_factory.mktemp("report"))


def run_of(toy: Toy, trainer: str, fold: int) -> Run:
    return Run(toy.study.results, DATASET, CONFIGURATION, trainer, PLANS, fold)


def pooled_differences(toy: Toy, trainer: str, folds: list[int]) -> dict[int, np.ndarray]:
    return {fold: np.array([toy.overall(trainer, case) - toy.overall(BASELINE, case) for case in case_names(fold)])
            for fold in folds}


# results.py

def test_a_complete_fold_gives_nnunets_dice_per_case_and_its_means(toy: Toy):
    result = read_fold(run_of(toy, BASELINE, 2))
    assert result.state == COMPLETE
    assert list(result.case_dice) == case_names(2)
    for case in case_names(2):
        expected = toy.case_dice(BASELINE, case)
        assert result.case_dice[case]["1"] == pytest.approx(expected[1])
        assert np.isnan(result.case_dice[case]["2"]) == np.isnan(expected[2])
        assert result.case_values()[case] == pytest.approx(toy.overall(BASELINE, case))
    # the label no case has undefined Dice for, and the overall mean as nnU-Net's foreground_mean builds it
    label_means = [np.nanmean([toy.case_dice(BASELINE, case)[label] for case in case_names(2)]) for label in (1, 2)]
    assert [result.mean_dice["1"], result.mean_dice["2"]] == pytest.approx(label_means)
    assert result.foreground_mean_dice == pytest.approx(np.mean(label_means))
    assert np.isnan(result.case_dice[EMPTY_RIGHT_CASE]["2"])  # reference and prediction without label 2
    assert result.label_names == {"0": "background", "1": "left", "2": "right"}


def test_a_fold_gives_its_curves_parameters_and_device_from_nnunets_checkpoint_and_debug_json(toy: Toy):
    result = read_fold(run_of(toy, DCA, 1))
    logging = torch.load(result.run.fold_folder / "checkpoint_final.pth", weights_only=False)["logging"]
    assert result.checkpoint == "checkpoint_final.pth"
    assert result.curves.epochs == EPOCHS
    assert result.curves.pseudo_dice == pytest.approx(logging["mean_fg_dice"])
    assert result.curves.pseudo_dice_ema == pytest.approx(logging["ema_fg_dice"])
    assert result.curves.train_loss == pytest.approx(logging["train_losses"])
    assert result.curves.val_loss == pytest.approx(logging["val_losses"])
    assert result.curves.epoch_seconds == pytest.approx(np.subtract(logging["epoch_end_timestamps"],
                                                                    logging["epoch_start_timestamps"]))
    assert result.parameters == toy.parameters[DCA]  # BatchNorm's running statistics left out
    assert result.device == "NVIDIA H100 80GB HBM3"


def test_folds_without_summary_are_not_validated_training_or_missing(toy: Toy):
    not_validated = read_fold(run_of(toy, SHORT, 1))
    assert not_validated.state == NOT_VALIDATED and not_validated.case_dice == {}
    assert not_validated.checkpoint == "checkpoint_final.pth" and not_validated.curves.epochs == EPOCHS
    training = read_fold(run_of(toy, DCA, 3))
    assert training.state == TRAINING and training.case_dice == {} and training.foreground_mean_dice is None
    assert training.checkpoint == "checkpoint_latest.pth" and training.curves.epochs == EPOCHS
    missing = read_fold(run_of(toy, SHORT, 2))
    assert missing.state == MISSING and missing.curves is None and missing.parameters is None


def test_trainers_validated_on_different_cases_are_refused(toy: Toy, tmp_path: Path):
    results = tmp_path / "nnUNet_results"
    shutil.copytree(toy.study.results, results)
    summary_file = results / DATASET / f"{DCA}__{PLANS}__{CONFIGURATION}" / "fold_1" / "validation" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["metric_per_case"][0]["reference_file"] = "/elsewhere/case_099.nii.gz"
    summary_file.write_text(json.dumps(summary))
    study = Study(results, toy.study.preprocessed, (DATASET,), (CONFIGURATION,), (BASELINE, DCA), FOLDS, PLANS)
    with pytest.raises(StudyError, match=f"trainers with different splits: {DATASET} {CONFIGURATION} fold 1: "
                                         f"{DCA} validated other cases than {BASELINE}") as error:
        write_report(study, tmp_path / "report")
    assert "\n" not in str(error.value)


def truncate(path: Path) -> None:
    """As a file being written, or cut off by a full disk or a killed job."""
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def json_without(key: str):
    def change(path: Path) -> None:
        data = json.loads(path.read_text())
        del data[key]
        path.write_text(json.dumps(data))
    return change


def checkpoint_without(key: str):
    def change(path: Path) -> None:
        checkpoint = torch.load(path, weights_only=False)
        del checkpoint[key]
        torch.save(checkpoint, path)
    return change


VALIDATE_AGAIN = f"validate again with nnUNetv2_train {DATASET} {CONFIGURATION} 1 -tr {DCA} -p {PLANS} --npz --val"
WHILE_WRITTEN = "if a training is writing it right now, run the report again in a moment"


@pytest.mark.parametrize("file, change, problem, fix", [
    ("fold_1/validation/summary.json", truncate, "is no valid JSON (JSONDecodeError: ", VALIDATE_AGAIN),
    ("fold_1/validation/summary.json", json_without("metric_per_case"), "lacks 'metric_per_case'", VALIDATE_AGAIN),
    ("fold_1/validation/summary.json", json_without("mean"), "lacks 'mean'", VALIDATE_AGAIN),
    ("fold_1/validation/summary.json", json_without("foreground_mean"), "lacks 'foreground_mean'", VALIDATE_AGAIN),
    ("fold_1/debug.json", truncate, "is no valid JSON", "nnU-Net writes it when a training starts: run the report "
                                                        "again once it has"),
    ("dataset.json", truncate, "is no valid JSON", f"nnU-Net copies it there from nnUNet_preprocessed/{DATASET}/"
                                                   f"dataset.json when a training starts: copy that file there again"),
    ("fold_1/checkpoint_final.pth", checkpoint_without("logging"), "lacks 'logging'", WHILE_WRITTEN),
    ("fold_1/checkpoint_final.pth", checkpoint_without("network_weights"), "lacks 'network_weights'", WHILE_WRITTEN),
])
def test_a_result_file_that_cannot_be_read_is_named_with_what_to_do(toy: Toy, tmp_path: Path, file, change, problem,
                                                                     fix):
    results = tmp_path / "nnUNet_results"
    shutil.copytree(toy.study.results, results)
    path = results / DATASET / f"{DCA}__{PLANS}__{CONFIGURATION}" / file
    change(path)
    study = Study(results, toy.study.preprocessed, (DATASET,), (CONFIGURATION,), (BASELINE, DCA), FOLDS, PLANS)
    with pytest.raises(StudyError) as error:
        write_report(study, tmp_path / "report")
    message = str(error.value)
    assert message.startswith(f"{path} {problem}") and fix in message and "\n" not in message, message


# statistics.py

def test_the_paired_comparison_pools_the_folds_both_completed_and_matches_scipy(toy: Toy):
    baseline = {fold: read_fold(run_of(toy, BASELINE, fold)).case_values() for fold in FOLDS}
    dca = {fold: read_fold(run_of(toy, DCA, fold)).case_values() for fold in FOLDS if fold != 3}
    comparison = compare(baseline, dca)
    by_fold = pooled_differences(toy, DCA, [0, 1, 2])
    differences = np.concatenate(list(by_fold.values()))
    assert comparison.cases == differences.size == 12
    assert comparison.mean_difference == pytest.approx(differences.mean())
    assert comparison.wilcoxon_p == pytest.approx(stats.wilcoxon(differences).pvalue)
    interval = stats.bootstrap((differences,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES,
                               rng=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
    assert comparison.interval == pytest.approx((interval.low, interval.high))
    assert comparison.interval[0] < comparison.mean_difference < comparison.interval[1]
    assert (comparison.wins, comparison.ties, comparison.losses) == (
        int(np.sum(differences > 0)), int(np.sum(differences == 0)), int(np.sum(differences < 0)))
    assert comparison.ties >= 1  # SAME_CASE
    assert comparison.fold_differences == pytest.approx({fold: values.mean() for fold, values in by_fold.items()})
    assert comparison.folds_disagree  # the toy's DCA is better in folds 0 and 1, worse in 2


def test_an_undefined_dice_counts_as_1_in_the_paired_comparison(toy: Toy):
    """EMPTY_RIGHT_CASE has no label 2: the baseline predicts none there (nnU-Net's Dice NaN, a correct empty call),
    DCA predicts some (Dice 0). DCA loses the case, the baseline against itself ties it; no case is left out."""
    baseline, dca = read_fold(run_of(toy, BASELINE, 2)), read_fold(run_of(toy, DCA, 2))
    assert math.isnan(baseline.case_dice[EMPTY_RIGHT_CASE]["2"]) and dca.case_dice[EMPTY_RIGHT_CASE]["2"] == 0
    label_2 = compare({2: baseline.case_values("2")}, {2: dca.case_values("2")})
    differences = [toy.counted(DCA, case)[2] - toy.counted(BASELINE, case)[2] for case in case_names(2)]
    assert label_2.cases == CASES_PER_FOLD and -1.0 in differences
    assert label_2.mean_difference == pytest.approx(np.mean(differences))
    assert label_2.losses == sum(difference < 0 for difference in differences)
    itself = compare({2: baseline.case_values("2")}, {2: baseline.case_values("2")})
    assert (itself.cases, itself.ties) == (CASES_PER_FOLD, CASES_PER_FOLD)
    # the overall Dice of the case: both labels for both trainers, label 2 counted as 1 for the baseline
    left = toy.case_dice(BASELINE, EMPTY_RIGHT_CASE)[1]
    assert baseline.case_values()[EMPTY_RIGHT_CASE] == pytest.approx((left + 1) / 2)
    overall = compare({2: baseline.case_values()}, {2: dca.case_values()})
    assert overall.cases == CASES_PER_FOLD
    assert overall.mean_difference == pytest.approx(np.mean(pooled_differences(toy, DCA, [2])[2]))


@pytest.mark.parametrize("differences, interval_note, wilcoxon_note", [
    ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "all differences are equal", "no case differs"),
    ([0.1], "fewer than 2 cases", "1 differing cases, too few to reach p < 0.05: the smallest p is 1"),
    ([0.1, -0.2, 0.05, 0.0, 0.3], "", "4 differing cases, too few to reach p < 0.05: the smallest p is 0.125"),
    ([], "no paired cases", "no paired cases"),
])
def test_too_few_or_equal_differences_say_what_the_interval_and_p_lack(differences, interval_note, wilcoxon_note):
    baseline = {0: {f"c{index}": 0.5 for index in range(len(differences))}}
    trainer = {0: {f"c{index}": 0.5 + difference for index, difference in enumerate(differences)}}
    comparison = compare(baseline, trainer)
    assert comparison.cases == len(differences)
    assert (comparison.interval is None) == bool(interval_note) and interval_note in comparison.interval_note
    assert comparison.wilcoxon_note == wilcoxon_note
    if np.count_nonzero(differences):  # scipy's p, shown beside the note
        assert comparison.wilcoxon_p == pytest.approx(stats.wilcoxon(differences, zero_method="wilcox").pvalue)
    else:
        assert comparison.wilcoxon_p is None


@pytest.mark.parametrize("fold_differences, words", [
    ({0: 0.1, 1: 0.2}, "All 2 folds agree: T is better in each."),
    ({0: -0.1, 1: -0.2}, "All 2 folds agree: T is worse in each."),
    ({0: 0.1, 1: 0.0}, "The folds do not all agree: T is better in fold 0, equal (mean difference 0) in fold 1."),
    ({0: 0.0, 1: 0.0}, "All 2 folds are equal: the mean difference is 0 in each."),
    ({0: 0.1, 1: -0.1, 2: 0.0}, "Folds disagree in sign: T is better in fold 0 and worse in fold 1, equal (mean "
                                "difference 0) in fold 2; the pooled test mixes runs that went opposite ways."),
])
def test_the_folds_agree_only_when_each_goes_the_same_way(fold_differences, words):
    baseline = {fold: {f"c{index}": 0.5 for index in range(3)} for fold in fold_differences}
    trainer = {fold: {f"c{index}": 0.5 + difference for index in range(3)}
               for fold, difference in fold_differences.items()}
    assert describe_folds(compare(baseline, trainer), "T") == words


# report.py and figures.py

def markdown_row(text: str, heading: str, first_cell: str) -> list[str]:
    """The cells of the row starting with first_cell in the first table after the heading."""
    section = text[text.index(heading):]
    row = next(line for line in section.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_the_report_shows_cross_validation_only_for_trainers_with_every_fold(toy: Toy, report: Path):
    text = report.read_text()
    cases = [case for fold in FOLDS for case in case_names(fold)]
    pooled = [np.nanmean([toy.case_dice(BASELINE, case)[label] for case in cases]) for label in (1, 2)]
    cv = markdown_row(text, f"#### {BASELINE}", "CV")
    assert cv[1] == "folds 0, 1, 2, 3"
    assert [float(cell) for cell in cv[2:5]] == pytest.approx([*pooled, np.mean(pooled)], abs=5e-5)
    assert markdown_row(text, f"#### {DCA}", "CV")[1] == "incomplete: fold 3 training"
    assert markdown_row(text, f"#### {DCA}", "3")[1] == TRAINING
    assert markdown_row(text, f"#### {SHORT}", "CV")[1] == "incomplete: fold 1 not validated, folds 2, 3 missing"
    assert markdown_row(text, f"#### {SHORT}", "1")[1] == NOT_VALIDATED
    assert markdown_row(text, f"#### {SHORT}", "2")[1] == MISSING
    assert "--train local or slurm validates it, as `nnUNetv2_train ... --val --npz` does" in text
    fold_0 = markdown_row(text, f"#### {DCA}", "0")
    assert float(fold_0[4]) == pytest.approx(read_fold(run_of(toy, DCA, 0)).foreground_mean_dice, abs=5e-5)


def test_the_report_compares_pooled_cases_and_says_when_folds_disagree(toy: Toy, report: Path):
    text = report.read_text()
    row = markdown_row(text, "### Paired comparison", DCA)
    differences = np.concatenate(list(pooled_differences(toy, DCA, [0, 1, 2]).values()))
    assert row[1] == "overall" and row[2] == "12"
    assert float(row[3]) == pytest.approx(differences.mean(), abs=5e-5)
    assert float(row[5]) == pytest.approx(stats.wilcoxon(differences).pvalue, rel=1e-2)
    assert row[6] == f"{np.sum(differences > 0)} / {np.sum(differences == 0)} / {np.sum(differences < 0)}"
    by_fold = pooled_differences(toy, DCA, [0, 1, 2])
    better = ", ".join(str(fold) for fold, values in by_fold.items() if values.mean() > 0)
    worse = ", ".join(str(fold) for fold, values in by_fold.items() if values.mean() < 0)
    assert better and worse  # the toy is made so: DCA better in folds 0 and 1, worse in 2
    words = (f"- {DCA}: compared: folds 0, 1, 2; left out: fold 3 \\({DCA}: training\\). Folds disagree in sign: "
             f"{DCA} is better in folds? {better} and worse in folds? {worse};")
    assert re.search(words, text)
    assert (f"- {SHORT}: compared: fold 0; left out: fold 1 ({SHORT}: not validated), fold 2 ({SHORT}: missing), "
            f"fold 3 ({SHORT}: missing). One fold only") in text
    short = markdown_row(text, "### Paired comparison", SHORT)
    short_differences = pooled_differences(toy, SHORT, [0])[0]
    p = stats.wilcoxon(short_differences, zero_method="wilcox").pvalue
    assert short[2] == str(CASES_PER_FOLD)
    assert short[5] == (f"{p:.3g} ({np.count_nonzero(short_differences)} differing cases, too few to reach "
                        f"p < 0.05: the smallest p is {2 / 2 ** np.count_nonzero(short_differences):.3g})")


def test_the_report_shows_the_cost_against_the_baseline(toy: Toy, report: Path):
    row = markdown_row(report.read_text(), "### Cost", DCA)
    assert row[1] == f"{toy.parameters[DCA]:,}"
    assert row[2].startswith(f"{toy.parameters[DCA] - toy.parameters[BASELINE]:+,}")
    seconds = [seconds for fold in FOLDS for seconds in read_fold(run_of(toy, DCA, fold)).curves.epoch_seconds]
    assert float(row[3]) == pytest.approx(np.median(seconds), abs=0.05)
    assert row[6] == "NVIDIA H100 80GB HBM3"
    assert "GPU memory is not shown: nnU-Net logs none" in report.read_text()


def test_the_figures_are_pngs_linked_relatively(report: Path):
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    assert len(links) == 3  # a per-case scatter for each of the two trainers, the training curves
    for link in links:
        path = report.parent / link
        assert not Path(link).is_absolute() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(path).ndim == 3


def test_report_json_holds_every_number_and_no_nan(toy: Toy, report: Path):
    def refuse(constant: str):
        raise ValueError(f"report.json holds {constant}")

    data = json.loads((report.parent / "report.json").read_text(), parse_constant=refuse)
    section = data["configurations"][0]
    assert (data["baseline"], data["folds"], section["dataset"]) == (BASELINE, list(FOLDS), DATASET)
    case = section["trainers"][DCA]["folds"]["2"]["cases"][EMPTY_RIGHT_CASE]
    assert case["2"] == 0.0 and case["overall"] == pytest.approx(toy.overall(DCA, EMPTY_RIGHT_CASE))
    assert section["trainers"][BASELINE]["folds"]["2"]["cases"][EMPTY_RIGHT_CASE]["2"] is None  # NaN in summary
    assert section["trainers"][DCA]["missing_folds"] == [3] and section["trainers"][DCA]["cross_validation"] is None
    assert len(section["trainers"][DCA]["folds"]["3"]["curves"]["epoch_seconds"]) == EPOCHS
    overall = next(item for item in section["comparisons"] if item["trainer"] == DCA and item["dice_of"] == "overall")
    expected = compare({fold: read_fold(run_of(toy, BASELINE, fold)).case_values() for fold in FOLDS},
                       {fold: read_fold(run_of(toy, DCA, fold)).case_values() for fold in (0, 1, 2)})
    assert overall["mean_difference"] == pytest.approx(expected.mean_difference)
    assert overall["interval"] == pytest.approx(list(expected.interval))
    assert {int(fold): value for fold, value in overall["fold_differences"].items()} == pytest.approx(
        expected.fold_differences)
    assert overall["folds_compared"] == [0, 1, 2] and overall["folds_left_out"] == {"3": f"{DCA}: training"}
    assert section["cost"][DCA]["parameters"] == toy.parameters[DCA]
