"""`nnunet-dca compare`'s study (what to compare, checked against nnU-Net's folders) and local training.

The folders are minimal fake nnU-Net layouts (plans, dataset.json, splits, checkpoint files); nnUNetv2_train is a
small script that records how it was called.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

from nnunet_dca.compare import local, locks, workflow
from nnunet_dca.compare.locks import LOCK_SUFFIX, lock_path
from nnunet_dca.compare.study import (
    CHECKPOINT_FINAL,
    CHECKPOINT_LATEST,
    DONE,
    FRESH,
    RESUME,
    SUMMARY,
    VALIDATE,
    Run,
    Study,
    StudyError,
    check_model_folder_plans,
    check_preprocessed,
    resolve_study,
)
from nnunet_dca.trainers import trainer_dir
from plans_examples import DATASET_JSON, make_plans

DATASET = "Dataset999_Tiny"
TRAINERS = ["nnUNetTrainer", "nnUNetTrainerDCA"]


def write_dataset(preprocessed: Path, name: str = DATASET, splits: int | None = 5,
                  preprocess: tuple[str, ...] = ("2d",)) -> dict:
    """A dataset as nnUNetv2_plan_and_preprocess leaves it: plans, dataset.json, splits and one case per
    preprocessed configuration in `preprocess`. Returns the plans."""
    folder = preprocessed / name
    folder.mkdir(parents=True)
    plans = {**make_plans(), "dataset_name": name}
    save_json(plans, str(folder / "nnUNetPlans.json"))
    save_json(DATASET_JSON, str(folder / "dataset.json"))
    if splits is not None:
        save_json([{"train": ["case_1"], "val": ["case_0"]}] * splits, str(folder / "splits_final.json"))
    for configuration in preprocess:
        data = folder / plans["configurations"][configuration]["data_identifier"]
        data.mkdir(exist_ok=True)
        for file in ("case_0.b2nd", "case_0_seg.b2nd", "case_0.pkl"):
            (data / file).touch()
    return plans


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """nnUNet_preprocessed (with DATASET) and nnUNet_results (empty), exported; DCA's trainers on nnUNet_extTrainer."""
    preprocessed, results = tmp_path / "nnUNet_preprocessed", tmp_path / "nnUNet_results"
    write_dataset(preprocessed)
    results.mkdir()
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.setenv("nnUNet_extTrainer", trainer_dir())
    return preprocessed, results


def refusal(**arguments) -> str:
    """The message of the StudyError resolve_study raises for these arguments over the defaults."""
    defaults = {"datasets": [999], "configurations": ["2d"], "trainers": TRAINERS, "folds": [0, 1]}
    with pytest.raises(StudyError) as error:
        resolve_study(**{**defaults, **arguments})
    assert "\n" not in str(error.value)
    return str(error.value)


def write_model_folder_plans(results: Path, plans: dict, trainer: str = "nnUNetTrainer",
                             configuration: str = "2d") -> Path:
    """A model folder's plans.json, as nnUNetTrainer.on_train_start copies the plans there."""
    folder = results / DATASET / f"{trainer}__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    save_json(plans, str(folder / "plans.json"))
    return folder


# ---------------------------------------------------------------- the study


def test_a_study_holds_every_run_in_order(folders):
    preprocessed, results = folders
    study = resolve_study(["999"], ["2d", "3d_fullres"], [*TRAINERS, "nnUNetTrainerDCA_SCAOnly"], [0, 1])
    assert (study.results, study.preprocessed, study.datasets) == (results, preprocessed, (DATASET,))
    assert study.baseline == "nnUNetTrainer"
    runs = study.runs()
    assert [(run.configuration, run.trainer, run.fold) for run in runs[:5]] == [
        ("2d", "nnUNetTrainer", 0), ("2d", "nnUNetTrainer", 1), ("2d", "nnUNetTrainerDCA", 0),
        ("2d", "nnUNetTrainerDCA", 1), ("2d", "nnUNetTrainerDCA_SCAOnly", 0)]
    assert len(runs) == 2 * 3 * 2
    assert study.runs_of(DATASET, "3d_fullres", "nnUNetTrainerDCA") == [
        Run(results, DATASET, "3d_fullres", "nnUNetTrainerDCA", "nnUNetPlans", fold) for fold in (0, 1)]
    assert runs[0].model_folder == results / DATASET / "nnUNetTrainer__nnUNetPlans__2d"


def test_folders_are_read_at_the_call_or_given(folders, tmp_path, monkeypatch):
    preprocessed, results = folders
    monkeypatch.delenv("nnUNet_results")
    assert "nnUNet_results is not set" in refusal() and "export" in refusal()
    study = resolve_study([DATASET], ["2d"], TRAINERS, [0], results=results)
    assert study.results == results and study.datasets == (DATASET,)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "elsewhere"))
    assert resolve_study([999], ["2d"], TRAINERS, [0]).results == tmp_path / "elsewhere"


def test_unknown_datasets_are_refused(folders):
    preprocessed, _ = folders
    message = refusal(datasets=[5])
    assert "unknown dataset 5" in message and str(preprocessed) in message
    assert "(nnUNetv2_plan_and_preprocess -d 5)" in message
    assert "unknown dataset Dataset005_Other" in refusal(datasets=["Dataset005_Other"])
    message = refusal(datasets=["Hippocampus"])
    assert "'Hippocampus' is no dataset" in message and "give its id" in message
    write_dataset(preprocessed, "Dataset999_Twin")
    message = refusal(datasets=[999])
    assert f"{DATASET} and Dataset999_Twin" in message and "give the full name" in message


def test_results_without_preprocessed_plans_use_a_model_folders_plans(folders):
    preprocessed, results = folders
    plans = load_json(str(preprocessed / DATASET / "nnUNetPlans.json"))
    (preprocessed / DATASET / "nnUNetPlans.json").unlink()
    message = refusal()
    assert "no plans for Dataset999_Tiny" in message and "nnUNetv2_plan_and_preprocess -d 999 -c 2d" in message
    shutil.rmtree(preprocessed / DATASET)  # results copied from a cluster
    write_model_folder_plans(results, {**plans, "configurations": {"2d": plans["configurations"]["2d"]}})
    assert resolve_study([999], ["2d"], TRAINERS, [0]).datasets == (DATASET,)
    assert "unknown configuration '3d_fullres'" in refusal(configurations=["3d_fullres"])


def test_unknown_configurations_are_refused(folders):
    preprocessed, _ = folders
    message = refusal(configurations=["2d", "3d_lowres"])
    assert "unknown configuration '3d_lowres'" in message
    assert str(preprocessed / DATASET / "nnUNetPlans.json") in message and "has 2d, 2d_resenc, 3d_fullres" in message
    assert "-c" in message


def test_unknown_trainers_are_refused(folders):
    message = refusal(trainers=["nnUNetTrainer", "nnUNetTrainerNope"])
    assert "unknown trainer 'nnUNetTrainerNope'" in message and "finds no such class" in message
    assert f"add the folder of its .py file to nnUNet_extTrainer (nnunet-dca's trainers are in {trainer_dir()})" \
        in message


def test_a_trainer_on_nnunet_ext_trainer_is_found(folders, tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "nnUNetTrainerMine.py").write_text(textwrap.dedent("""\
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


        class nnUNetTrainerMine(nnUNetTrainer):
            pass
        """))
    assert "unknown trainer 'nnUNetTrainerMine'" in refusal(trainers=["nnUNetTrainer", "nnUNetTrainerMine"])
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(tmp_path / "mine"), trainer_dir()]))
    assert resolve_study([999], ["2d"], ["nnUNetTrainer", "nnUNetTrainerMine"], [0]).trainers[1] == "nnUNetTrainerMine"


def test_folds_must_be_in_the_datasets_splits(folders):
    preprocessed, _ = folders
    message = refusal(folds=[0, 5])
    assert "fold 5 is out of range for Dataset999_Tiny" in message and "has 5 splits" in message
    assert "folds from 0 to 4 (--folds)" in message
    assert "fold -1 is out of range" in refusal(folds=[-1])
    save_json([{"train": ["case_1"], "val": ["case_0"]}] * 3, str(preprocessed / DATASET / "splits_final.json"))
    assert "folds from 0 to 2" in refusal(folds=[3])
    (preprocessed / DATASET / "splits_final.json").unlink()
    message = refusal(folds=[5])
    assert "nnU-Net's default cross-validation has 5 splits" in message
    assert resolve_study([999], ["2d"], TRAINERS, [4]).folds == (4,)


def test_trainers_are_two_or_more_and_nothing_is_given_twice(folders):
    assert "at least two trainers, the baseline first" in refusal(trainers=["nnUNetTrainer"])
    assert "trainer nnUNetTrainer is given twice" in refusal(trainers=["nnUNetTrainer", "nnUNetTrainer"])
    assert "dataset Dataset999_Tiny is given twice" in refusal(datasets=[999, DATASET])
    assert "fold 1 is given twice" in refusal(folds=[1, 1])


# ---------------------------------------------------------------- preprocessed data and model folders


def test_training_needs_each_configurations_preprocessed_data(folders):
    preprocessed, _ = folders
    check_preprocessed(resolve_study([999], ["2d", "2d_resenc"], TRAINERS, [0]))  # one data folder, both configs
    with pytest.raises(StudyError) as error:
        check_preprocessed(resolve_study([999], ["2d", "3d_fullres"], TRAINERS, [0]))
    message = str(error.value)
    assert str(preprocessed / DATASET / "nnUNetPlans_3d_fullres") in message
    assert message.endswith("run nnUNetv2_preprocess -d 999 -c 3d_fullres")


def test_training_needs_the_plans_in_nnunet_preprocessed(folders):
    preprocessed, results = folders
    plans = load_json(str(preprocessed / DATASET / "nnUNetPlans.json"))
    write_model_folder_plans(results, plans)
    (preprocessed / DATASET / "nnUNetPlans.json").unlink()
    study = resolve_study([999], ["2d", "3d_fullres"], TRAINERS, [0])  # a report can run on the kept plans
    with pytest.raises(StudyError) as error:
        check_preprocessed(study)
    assert "Dataset999_Tiny is not preprocessed for training" in str(error.value)
    assert str(error.value).endswith("run nnUNetv2_plan_and_preprocess -d 999 -c 2d 3d_fullres")


def test_other_plans_name_their_preprocessing_command(folders):
    preprocessed, _ = folders
    plans = load_json(str(preprocessed / DATASET / "nnUNetPlans.json"))
    save_json({**plans, "plans_name": "nnUNetResEncUNetMPlans"},
              str(preprocessed / DATASET / "nnUNetResEncUNetMPlans.json"))
    study = resolve_study([999], ["3d_fullres"], TRAINERS, [0], plans="nnUNetResEncUNetMPlans")
    with pytest.raises(StudyError, match="nnUNetv2_preprocess -d 999 -plans_name nnUNetResEncUNetMPlans "
                                         "-c 3d_fullres$"):
        check_preprocessed(study)


def test_results_of_other_plans_are_refused(folders):
    preprocessed, results = folders
    plans = load_json(str(preprocessed / DATASET / "nnUNetPlans.json"))
    plans["configurations"]["2d"]["patch_size"] = [32, 32]
    folder = write_model_folder_plans(results, plans, trainer="nnUNetTrainerDCA")
    message = refusal()
    assert f"results in {folder} were trained with other plans" in message
    assert "patch_size: [32, 32] there, [64, 48] now" in message
    assert "(-p)" in message and "move that folder out of nnUNet_results" in message


def test_what_trainers_change_in_their_plans_is_no_other_plans(folders):
    preprocessed, results = folders
    plans = load_json(str(preprocessed / DATASET / "nnUNetPlans.json"))
    plans["configurations"]["2d"]["dca_resolved"] = {"stages": 4}  # nnUNetTrainerDCA records its settings
    plans["configurations"]["2d"]["batch_size"] = 8  # as nnU-Net's Primus trainers set it
    run = Run(results, DATASET, "2d", "nnUNetTrainerDCA", "nnUNetPlans", 0)
    write_model_folder_plans(results, plans, trainer="nnUNetTrainerDCA")
    check_model_folder_plans(run, preprocessed / DATASET / "nnUNetPlans.json")
    plans["configurations"]["2d"]["normalization_schemes"] = ["CTNormalization"]
    save_json(plans, str(run.model_folder / "plans.json"))
    with pytest.raises(StudyError, match=r'normalization_schemes: \["CTNormalization"\] there, '
                                         r'\["ZScoreNormalization"\] now'):
        check_model_folder_plans(run, preprocessed / DATASET / "nnUNetPlans.json")


# ---------------------------------------------------------------- training here

FAKE_TRAIN = """\
#!{python}
# nnUNetv2_train as run_local calls it: records its arguments and GPU, fails for the folds in FAKE_FAILING_FOLDS
import json, os, sys, time
from pathlib import Path

records = Path(os.environ["FAKE_RECORDS"])
gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
try:  # a second training on the same GPU (or on the CPU) at the same time finds the lock
    lock = os.open(records / f"gpu_{{gpu}}.lock", os.O_CREAT | os.O_EXCL)
except FileExistsError:
    sys.exit(3)
print("training", *sys.argv[1:], flush=True)
(records / f"{{os.getpid()}}.json").write_text(json.dumps({{"arguments": sys.argv[1:], "gpu": gpu}}))
time.sleep(float(os.environ.get("FAKE_SECONDS", "0.3")))
os.close(lock)
os.unlink(records / f"gpu_{{gpu}}.lock")
sys.exit(1 if sys.argv[3] in os.environ.get("FAKE_FAILING_FOLDS", "").split() else 0)
"""


@pytest.fixture
def fake_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """nnUNetv2_train replaced by FAKE_TRAIN; returns the folder of its records."""
    script = tmp_path / "nnUNetv2_train"
    script.write_text(FAKE_TRAIN.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setattr(local, "nnunet_command", lambda name: str(script))
    monkeypatch.setattr(local, "POLL_SECONDS", 0.02)
    records = tmp_path / "records"
    records.mkdir()
    return records


def make_study(results: Path, folds: tuple[int, ...] = (0, 1, 2)) -> Study:
    return Study(results, results.parent / "nnUNet_preprocessed", (DATASET,), ("2d",), tuple(TRAINERS), folds)


def checkpoint(run: Run, name: str) -> None:
    run.fold_folder.mkdir(parents=True, exist_ok=True)
    (run.fold_folder / name).touch()


def write_summary(run: Run, cases: tuple[str, ...] = ("case_0",)) -> None:
    """The validation's summary.json as nnU-Net's compute_metrics_on_folder writes it (the keys the report reads),
    with the dataset.json nnU-Net copies into the model folder; no checkpoint, as in results copied without .pth."""
    (run.fold_folder / SUMMARY).parent.mkdir(parents=True, exist_ok=True)
    save_json(DATASET_JSON, str(run.model_folder / "dataset.json"))
    per_case = [{"reference_file": f"/gt/{case}.nii.gz", "prediction_file": f"/prediction/{case}.nii.gz",
                 "metrics": {"1": {"Dice": 0.5}, "2": {"Dice": 0.5}}} for case in cases]
    save_json({"metric_per_case": per_case, "mean": {"1": {"Dice": 0.5}, "2": {"Dice": 0.5}},
               "foreground_mean": {"Dice": 0.5}}, str(run.fold_folder / SUMMARY))


def test_a_runs_state_is_read_from_its_fold_folder(tmp_path):
    run = make_study(tmp_path / "nnUNet_results").runs()[0]
    assert run.state == FRESH
    checkpoint(run, CHECKPOINT_LATEST)
    assert run.state == RESUME
    checkpoint(run, CHECKPOINT_FINAL)
    assert run.state == VALIDATE  # trained; the validation after it was cut off
    write_summary(run)
    assert run.state == DONE
    for name in (CHECKPOINT_FINAL, CHECKPOINT_LATEST):
        (run.fold_folder / name).unlink()
    assert run.state == DONE  # results copied without their checkpoints are validated all the same


def recorded(records: Path) -> list[dict]:
    return [json.loads(file.read_text()) for file in sorted(records.glob("*.json"))]


def test_local_training_runs_what_is_missing_one_per_gpu(tmp_path, fake_train):
    study = make_study(tmp_path / "nnUNet_results")
    done, resumed, _, to_validate, *_ = runs = study.runs()
    write_summary(done)
    checkpoint(resumed, CHECKPOINT_LATEST)
    checkpoint(to_validate, CHECKPOINT_FINAL)
    lines = []
    env = {**os.environ, "FAKE_RECORDS": str(fake_train), "FAKE_FAILING_FOLDS": "2"}
    exit_codes = local.run_local(runs, "cpu", ["0", "1"], tmp_path / "logs", env, echo=lines.append)

    assert exit_codes == {run: 1 if run.fold == 2 else 0 for run in runs if run != done}  # 3 = two on one GPU
    calls = recorded(fake_train)
    assert len(calls) == 5 and {call["gpu"] for call in calls} == {"0", "1"}
    for call in calls:
        dataset, configuration, fold, *options = call["arguments"]
        assert options[0] == "-tr" and options[1] in TRAINERS
        assert options[2:7] == ["-p", "nnUNetPlans", "--npz", "-device", "cuda"]
        assert ("--c" in options) == ((options[1], int(fold)) == (resumed.trainer, resumed.fold))
        assert ("--val" in options) == ((options[1], int(fold)) == (to_validate.trainer, to_validate.fold))

    started = [line for line in lines if line.startswith("[started")]
    finished = [line for line in lines if line.startswith("[finished")]
    assert lines[0] == "1 of 6 trainings already done, 5 to train"
    assert len(started) == len(finished) == 5 and "[finished 5/5]" in finished[-1]
    assert [line for line in started if "(resumes with --c)" in line] == [
        f"[started 1/5] {resumed.label} (resumes with --c) on GPU 0"]
    validating = [line for line in started if "--val" in line]
    assert len(validating) == 1 and validating[0].startswith(f"[started 3/5] {to_validate.label} (validation only, "
                                                             f"--val) on GPU ")
    failures = [line for line in finished if "FAILED" in line]
    assert len(failures) == 2 and all("fold 2 FAILED (exit 1), log: " in line for line in failures)
    failed_log = Path(failures[0].split("log: ")[1])
    assert failed_log.parent == tmp_path / "logs" and "training" in failed_log.read_text()
    assert lines[-1] == "3 of 5 trainings finished, 2 FAILED"
    assert len(list((tmp_path / "logs").glob("*.log"))) == 5
    assert not list(study.results.rglob("*.log"))


def test_local_training_without_gpus_runs_one_at_a_time_on_the_device(tmp_path, fake_train, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    runs = make_study(tmp_path / "nnUNet_results", folds=(0, 1)).runs()
    env = {**os.environ, "FAKE_RECORDS": str(fake_train)}
    lines = []
    assert set(local.run_local(runs, "cpu", None, tmp_path / "logs", env, lines.append).values()) == {0}
    calls = recorded(fake_train)
    assert len(calls) == 4 and all(call["gpu"] is None for call in calls)
    assert all(call["arguments"][-2:] == ["-device", "cpu"] for call in calls)
    assert all(line.endswith(" on cpu") for line in lines if line.startswith("[started"))
    assert lines[-1] == "4 of 4 trainings finished"


def test_nothing_is_trained_when_everything_is_validated(tmp_path, fake_train):
    runs = make_study(tmp_path / "nnUNet_results").runs()
    for run in runs:
        write_summary(run)  # no checkpoint: results copied without their .pth files
    lines = []
    assert local.run_local(runs, "cuda", ["0"], tmp_path / "logs", echo=lines.append) == {}
    assert lines == ["6 of 6 trainings already done, 0 to train", "0 of 0 trainings finished"]


def test_ctrl_c_terminates_the_running_trainings(tmp_path, fake_train, monkeypatch):
    def interrupt_once_training(seconds: float) -> None:
        while not list(fake_train.glob("*.json")):
            time.sleep(0.02)
        raise KeyboardInterrupt

    # local's clock only: subprocess's own waiting sleeps too
    monkeypatch.setattr(local, "time", SimpleNamespace(sleep=interrupt_once_training, monotonic=time.monotonic))
    env = {**os.environ, "FAKE_RECORDS": str(fake_train), "FAKE_SECONDS": "60"}
    lines = []
    start = time.monotonic()
    results = tmp_path / "nnUNet_results"
    with pytest.raises(KeyboardInterrupt):
        local.run_local(make_study(results).runs(), "cuda", ["0", "1"], tmp_path / "logs", env, lines.append)
    assert time.monotonic() - start < 30
    for record in fake_train.glob("*.json"):
        with pytest.raises(ProcessLookupError):  # terminated and reaped
            os.kill(int(record.stem), 0)
    assert lines[-1] == "stopped: 2 running training(s) terminated; run the same command again to resume"
    assert not list(results.rglob(f"*{LOCK_SUFFIX}"))  # their folds' locks released


def test_a_run_is_looked_at_again_when_its_turn_comes(tmp_path, fake_train):
    """While the first run trains, another comparison validates the second and trains the third: the second is
    skipped, the third only validated."""
    first, validated_meanwhile, trained_meanwhile, last = runs = make_study(tmp_path / "nnUNet_results", (0, 1)).runs()
    lines = []

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith("[started 1/"):
            write_summary(validated_meanwhile)
            checkpoint(trained_meanwhile, CHECKPOINT_FINAL)

    env = {**os.environ, "FAKE_RECORDS": str(fake_train)}
    exit_codes = local.run_local(runs, "cpu", None, tmp_path / "logs", env, echo)
    assert exit_codes == {first: 0, trained_meanwhile: 0, last: 0}
    calls = {(call["arguments"][4], int(call["arguments"][2])): call["arguments"] for call in recorded(fake_train)}
    assert set(calls) == {(run.trainer, run.fold) for run in (first, trained_meanwhile, last)}
    assert "--val" in calls[trained_meanwhile.trainer, trained_meanwhile.fold]
    assert f"[skipped 2/4] {validated_meanwhile.label}: validated meanwhile, by another comparison or a SLURM task" \
        in lines
    assert lines[-1] == "3 of 4 trainings finished, 1 validated meanwhile elsewhere"


def test_each_training_holds_its_folds_lock_and_a_fold_locked_elsewhere_is_skipped(tmp_path, fake_train, monkeypatch):
    monkeypatch.setattr(locks, "_slurm_job_ended", lambda job: False)  # SLURM job 12 runs, whether or not squeue exists
    first, locked, *_ = runs = make_study(tmp_path / "nnUNet_results", (0, 1)).runs()
    theirs = lock_path(locked.fold_folder)
    theirs.parent.mkdir(parents=True)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    theirs.write_text(json.dumps({"host": "node7", "pid": 4711, "slurm_job_id": "12", "started": now,
                                  "heartbeat": now}))
    lines, lock_holders = [], []

    def echo(line: str) -> None:
        lines.append(line)
        lock_holders.extend(json.loads(lock_path(run.fold_folder).read_text())["pid"] for run in runs
                            if line.startswith("[started") and f"] {run.label} on " in line)

    env = {**os.environ, "FAKE_RECORDS": str(fake_train)}
    exit_codes = local.run_local(runs, "cpu", None, tmp_path / "logs", env, echo)
    assert set(exit_codes) == {first, *runs[2:]} and len(recorded(fake_train)) == 3
    assert lock_holders == [os.getpid()] * 3  # each training's fold locked by this process while it ran
    assert [line for line in lines if line.startswith("[skipped")] == [
        f"[skipped 2/4] {locked.label}: being trained by process 4711 on node7 (SLURM job 12) since "
        f"{datetime.fromisoformat(now).astimezone().strftime('%Y-%m-%d %H:%M')} (lock {theirs})"]
    assert lines[-1] == "3 of 4 trainings finished, 1 being trained elsewhere"
    assert list(tmp_path.joinpath("nnUNet_results").rglob(f"*{LOCK_SUFFIX}")) == [theirs]  # ours released, theirs kept


def test_a_fold_whose_lock_cannot_be_taken_is_skipped_in_one_line_and_the_others_train(tmp_path, fake_train,
                                                                                         monkeypatch):
    first, unlockable, *_ = runs = make_study(tmp_path / "nnUNet_results", (0, 1)).runs()
    acquire = local.acquire

    def read_only(path, echo):
        if path == lock_path(unlockable.fold_folder):
            raise PermissionError(13, "Permission denied", str(path))
        return acquire(path, echo)

    monkeypatch.setattr(local, "acquire", read_only)
    lines = []
    env = {**os.environ, "FAKE_RECORDS": str(fake_train)}
    exit_codes = local.run_local(runs, "cpu", None, tmp_path / "logs", env, lines.append)
    assert set(exit_codes) == {first, *runs[2:]} and len(recorded(fake_train)) == 3
    path = lock_path(unlockable.fold_folder)
    assert [line for line in lines if line.startswith("[skipped")] == [
        f"[skipped 2/4] {unlockable.label}: cannot take the lock {path}: [Errno 13] Permission denied: '{path}'"]
    assert lines[-1] == "3 of 4 trainings finished, 1 not started (lock error)"


def test_trainers_with_different_splits_are_refused_before_anything_trains(folders, tmp_path, fake_train):
    preprocessed, results = folders
    stock, dca = (Run(results, DATASET, "2d", trainer, "nnUNetPlans", 0) for trainer in TRAINERS)
    write_summary(stock, ("case_0", "case_1"))
    write_summary(dca, ("case_0", "case_2"))  # validated on another split
    with pytest.raises(StudyError, match=f"trainers with different splits: {DATASET} 2d fold 0: nnUNetTrainerDCA "
                                         f"validated other cases than nnUNetTrainer"):
        workflow.compare([DATASET], ["2d"], TRAINERS, [0, 1], "nnUNetPlans", tmp_path / "out", train="local",
                         device="cpu", echo=lambda line: None)
    assert recorded(fake_train) == [] and not (tmp_path / "out").exists()
