"""`nnunet-dca compare` end to end through nnU-Net's real command line (minutes):

- real data no one here made, ISBI 2012 EM membranes (../shared/data/isbi2012-em), converted, planned and
  preprocessed by nnU-Net, then stock and DCA trained on two folds with `--train local`; the report is checked
  against values recomputed here from nnU-Net's own summary files and checkpoints;
- the demo task trained as a job array on a one-node SLURM cluster with `--train slurm`, and reported afterwards;
- two local comparisons of the same folds at once: the folds' locks let each fold train once (two job arrays of
  the same folds are test_compare_slurm's, with stand-in trainings).

Trainings are a few iterations long: these runs check the plumbing and the numbers' bookkeeping, not DCA.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import run
from nnunet_dca.compare.locks import LOCK_SUFFIX
from nnunet_dca.compare.statistics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE
from nnunet_dca.demo import DEMO_SETTINGS, PLANNING_SETTINGS, DemoLayout, nnunet_command, write_short_trainer
from real_data import ISBI, write_isbi_dataset
from slurm_cluster import wait_for_job

pytestmark = pytest.mark.e2e

STOCK_BASE = "nnunetv2.training.nnUNetTrainer.nnUNetTrainer.nnUNetTrainer"
ISBI_ID = 120
ISBI_FOLDS = (0, 1)
ISBI_EPOCHS, ISBI_ITERATIONS = 2, 1
# batches of two 512 x 512 sections, and validation without test-time mirroring (four passes per tile in 2D): the
# comparison's bookkeeping is the same, at a fraction of the time the planned batch and mirroring take on a CPU
ISBI_BATCH_SIZE = 2
STOCK, DCA = "nnUNetTrainer_compare", "nnUNetTrainerDCA_compare"
BATCH_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def isbi_compare(out: Path, *options: str) -> list[str | Path | int]:
    return ["nnunet-dca", "compare", ISBI_ID, "-c", "2d", "--trainers", STOCK, DCA, "--folds",
            *map(str, ISBI_FOLDS), "-device", "cpu", "--out", out, *options]


class IsbiComparison:
    """A finished `compare --train local` on the ISBI data: its folders, output, and report."""

    def __init__(self, layout: DemoLayout, out: Path, output: str) -> None:
        self.layout, self.out, self.output = layout, out, output
        self.report = json.loads((out / "report.json").read_text())
        self.section = self.report["configurations"][0]

    def env(self) -> dict[str, str]:
        return self.layout.environment(DEMO_SETTINGS)

    def fold_folder(self, trainer: str, fold: int) -> Path:
        return self.layout.results / self.section["dataset"] / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"

    def summary(self, trainer: str, fold: int) -> dict:
        return json.loads((self.fold_folder(trainer, fold) / "validation" / "summary.json").read_text())

    def case_dice(self, trainer: str) -> dict[tuple[int, str], float]:
        """(fold, case) -> Dice of the membrane label, read from nnU-Net's summaries."""
        return {(fold, Path(case["reference_file"]).name.removesuffix(".png")): case["metrics"]["1"]["Dice"]
                for fold in ISBI_FOLDS for case in self.summary(trainer, fold)["metric_per_case"]}


@pytest.fixture(scope="module")
def isbi(tmp_path_factory: pytest.TempPathFactory) -> IsbiComparison:
    if not ISBI.is_dir():
        pytest.skip(f"the ISBI 2012 EM data is not at {ISBI} (the tests read ../shared/data beside the repository)")
    layout = DemoLayout(tmp_path_factory.mktemp("isbi"))
    write_isbi_dataset(layout.raw, ISBI_ID)
    write_short_trainer(layout.trainers, STOCK, ISBI_ITERATIONS, ISBI_EPOCHS, base=STOCK_BASE, mirroring=False,
                        batch_size=ISBI_BATCH_SIZE)
    write_short_trainer(layout.trainers, DCA, ISBI_ITERATIONS, ISBI_EPOCHS, mirroring=False,
                        batch_size=ISBI_BATCH_SIZE)
    run(["nnUNetv2_plan_and_preprocess", "-d", ISBI_ID, "-c", "2d", "-np", "1", "-npfp", "1"],
        env=layout.environment(PLANNING_SETTINGS))
    out = layout.out / "comparison"
    output = run(isbi_compare(out, "--train", "local"), env=layout.environment(DEMO_SETTINGS))
    return IsbiComparison(layout, out, output)


def test_local_training_reports_every_run_started_and_finished(isbi):
    runs = len(ISBI_FOLDS) * 2
    assert f"0 of {runs} trainings already done, {runs} to train" in isbi.output
    for trainer in (STOCK, DCA):
        for fold in ISBI_FOLDS:
            assert re.search(rf"\[finished \d/{runs}\] \S+ 2d {trainer} fold {fold} ok in", isbi.output)
            assert (isbi.fold_folder(trainer, fold) / "checkpoint_final.pth").is_file()
    assert f"{runs} of {runs} trainings finished" in isbi.output


def test_dice_tables_are_nnunets_summaries_and_cross_validation(isbi):
    trainers = isbi.section["trainers"]
    for trainer in (STOCK, DCA):
        pooled = []
        for fold in ISBI_FOLDS:
            summary = isbi.summary(trainer, fold)
            reported = trainers[trainer]["folds"][str(fold)]
            assert reported["state"] == "complete"
            assert reported["mean_dice"]["1"] == pytest.approx(summary["mean"]["1"]["Dice"])
            assert reported["overall"] == pytest.approx(summary["foreground_mean"]["Dice"])
            pooled += [case["metrics"]["1"]["Dice"] for case in summary["metric_per_case"]]
        # one label: nnU-Net's cross-validation number is the mean over every fold's cases of it
        assert trainers[trainer]["missing_folds"] == []
        assert trainers[trainer]["cross_validation"]["overall"] == pytest.approx(np.nanmean(pooled))
    markdown = (isbi.out / "report.md").read_text()
    cv = trainers[DCA]["cross_validation"]["overall"]
    assert re.search(rf"\| CV \| folds 0, 1 \|.*{cv:.4f}", markdown)


def test_the_paired_comparison_is_recomputed_from_the_summaries(isbi):
    stock, dca = isbi.case_dice(STOCK), isbi.case_dice(DCA)
    assert stock.keys() == dca.keys()  # the same validation cases: nnU-Net's splits_final.json
    differences = np.array([dca[case] - stock[case] for case in sorted(stock)])
    # one label: its Dice is the overall Dice, compared once
    assert [c["dice_of"] for c in isbi.section["comparisons"]] == ["overall"]
    reported = isbi.section["comparisons"][0]
    assert reported["cases"] == len(differences) == 30 * len(ISBI_FOLDS) // 5
    assert reported["mean_difference"] == pytest.approx(differences.mean())
    assert (reported["wins"], reported["ties"], reported["losses"]) == (
        (differences > 0).sum(), (differences == 0).sum(), (differences < 0).sum())
    assert reported["wilcoxon_p"] == pytest.approx(stats.wilcoxon(differences, zero_method="wilcox").pvalue)
    interval = stats.bootstrap((differences,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
                               rng=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
    assert reported["interval"] == pytest.approx([interval.low, interval.high])
    for fold in ISBI_FOLDS:
        per_fold = [dca[case] - stock[case] for case in stock if case[0] == fold]
        assert reported["fold_differences"][str(fold)] == pytest.approx(np.mean(per_fold))


def test_cost_and_curves_come_from_the_checkpoints(isbi):
    cost = isbi.section["cost"]
    for trainer in (STOCK, DCA):
        checkpoint = torch.load(isbi.fold_folder(trainer, 0) / "checkpoint_final.pth", map_location="cpu",
                                weights_only=False)
        trained = sum(value.numel() for key, value in checkpoint["network_weights"].items()
                      if not key.endswith(BATCH_NORM_STATISTICS))
        assert cost[trainer]["parameters"] == trained
        curves = isbi.section["trainers"][trainer]["folds"]["0"]["curves"]
        assert curves["train_loss"] == pytest.approx(checkpoint["logging"]["train_losses"])
        assert len(curves["pseudo_dice"]) == ISBI_EPOCHS
    assert cost[DCA]["parameters"] > cost[STOCK]["parameters"]


def test_the_figures_are_pngs_linked_from_the_report(isbi):
    markdown = (isbi.out / "report.md").read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 2  # the per-case scatter against the baseline, the training curves
    for link in links:
        assert (isbi.out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_running_again_trains_nothing_and_leaves_the_results_as_they_were(isbi):
    before = {path: path.stat().st_mtime_ns for path in isbi.layout.results.rglob("*")}
    output = run(isbi_compare(isbi.out, "--train", "local"), env=isbi.env())
    runs = len(ISBI_FOLDS) * 2
    assert f"{runs} of {runs} trainings already done, 0 to train" in output
    assert {path: path.stat().st_mtime_ns for path in isbi.layout.results.rglob("*")} == before


def test_a_fold_whose_validation_was_cut_off_is_validated_not_trained_again(isbi):
    fold = isbi.fold_folder(DCA, 1)
    summary = fold / "validation" / "summary.json"
    validated = json.loads(summary.read_text())
    summary.unlink()  # as a validation cut off by Ctrl-C, a time limit or out of memory leaves the fold
    trained = (fold / "checkpoint_final.pth").stat().st_mtime_ns
    run(isbi_compare(isbi.out), env=isbi.env())
    markdown = (isbi.out / "report.md").read_text()
    assert "| 1 | not validated |" in markdown and "| CV | incomplete: fold 1 not validated |" in markdown
    output = run(isbi_compare(isbi.out, "--train", "local"), env=isbi.env())
    runs = len(ISBI_FOLDS) * 2
    assert f"{runs - 1} of {runs} trainings already done, 1 to train" in output
    assert re.search(rf"\[started 1/1\] \S+ 2d {DCA} fold 1 \(validation only, --val\) on cpu", output), output
    assert (fold / "checkpoint_final.pth").stat().st_mtime_ns == trained  # validated, not trained again
    assert json.loads(summary.read_text())["foreground_mean"]["Dice"] == pytest.approx(
        validated["foreground_mean"]["Dice"])
    assert "| 1 | not validated |" not in (isbi.out / "report.md").read_text()


def test_a_slurm_job_array_trains_the_missing_folds_and_the_report_picks_them_up(demo, slurm_cluster, tmp_path):
    for name, base in ((STOCK, STOCK_BASE), (DCA, "nnunet_dca.trainers.nnUNetTrainerDCA.nnUNetTrainerDCA")):
        write_short_trainer(demo.layout.trainers, name, iterations=1, base=base)
    command = ["nnunet-dca", "compare", demo.layout.dataset_name, "-c", "2d", "--trainers", STOCK, DCA,
               "--folds", "1", "-device", "cpu", "--out", tmp_path]
    output = run([*command, "--train", "slurm"], env=demo.env())
    job = re.search(r"Submitted job array (\d+): 2 of 2 trainings", output)
    assert job, output
    wait_for_job(job.group(1), timeout=900)
    task_logs = sorted((tmp_path / "slurm").glob(f"{job.group(1)}_*.log"))
    assert len(task_logs) == 2
    report = run(command, env=demo.env())
    assert "Report:" in report
    trainers = json.loads((tmp_path / "report.json").read_text())["configurations"][0]["trainers"]
    logs = "\n".join(log.read_text()[-2000:] for log in task_logs)
    for trainer in (STOCK, DCA):
        assert trainers[trainer]["folds"]["1"]["state"] == "complete", logs
        assert trainers[trainer]["cross_validation"] is not None


def write_lock_trainers(demo, suffix: str) -> tuple[str, str]:
    """A stock and a DCA trainer of one iteration, named for one test, so that its folds start untrained."""
    names = (f"nnUNetTrainer_{suffix}", f"nnUNetTrainerDCA_{suffix}")
    for name, base in zip(names, (STOCK_BASE, "nnunet_dca.trainers.nnUNetTrainerDCA.nnUNetTrainerDCA")):
        write_short_trainer(demo.layout.trainers, name, iterations=1, base=base)
    return names


def assert_each_fold_trained_once(demo, trainers: tuple[str, ...], folds: tuple[int, ...], outputs: str) -> None:
    """Each fold validated, with one nnU-Net training log, and started once over all `outputs`; no lock left."""
    results = demo.layout.results / demo.layout.dataset_name
    for trainer in trainers:
        for fold in folds:
            folder = results / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"
            assert (folder / "validation" / "summary.json").is_file(), outputs
            assert len(list(folder.glob("training_log_*.txt"))) == 1, outputs
    # two trainings started in the same second would share one log file: count the starts as well
    assert len(re.findall(r"\[started \d+/\d+\]", outputs)) == len(trainers) * len(folds), outputs
    assert not list(results.rglob(f"*{LOCK_SUFFIX}")), outputs


def test_two_local_comparisons_started_together_train_each_fold_once(demo, tmp_path):
    trainers, folds = write_lock_trainers(demo, "locallock"), (0,)  # both comparisons want both runs of fold 0
    processes = [subprocess.Popen([nnunet_command("nnunet-dca"), "compare", demo.layout.dataset_name, "-c", "2d",
                                   "--trainers", *trainers, "--folds", *map(str, folds), "-device", "cpu",
                                   "--train", "local", "--out", str(tmp_path / name)],
                                  env=demo.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for name in ("first", "second")]
    outputs = [process.communicate(timeout=1800)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], "\n".join(outputs)
    assert_each_fold_trained_once(demo, trainers, folds, "\n".join(outputs))
