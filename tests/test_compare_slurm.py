"""`nnunet-dca compare --train slurm`: the job array script, run by bash as SLURM would run each task and on a
one-node SLURM cluster (skipped where there is none), with a stand-in for nnUNetv2_train."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nnunet_dca.compare import slurm
from nnunet_dca.compare.slurm import SlurmError, SlurmOptions, array_script, nnunet_environment, submit
from nnunet_dca.compare.study import CHECKPOINT_FINAL, CHECKPOINT_LATEST, SUMMARY, Run
from slurm_cluster import slurm_cluster, wait_for_job  # noqa: F401 (fixture)

# Stands in for nnUNetv2_train: appends its arguments and the nnU-Net folders it sees to the fold's calls.txt,
# then writes the final checkpoint and the validation's summary.json, as a finished training would.
FAKE_TRAIN = """#!/bin/bash
set -eu
arguments="$*"
dataset=$1 configuration=$2 fold=$3
shift 3
while (($#)); do
    case $1 in -tr) trainer=$2; shift ;; -p) plans=$2; shift ;; esac
    shift
done
folder="$nnUNet_results/$dataset/${trainer}__${plans}__$configuration/fold_$fold"
mkdir -p "$folder"
echo "$arguments | $nnUNet_raw | ${nnUNet_extTrainer-}" >>"$folder/calls.txt"
touch "$folder/checkpoint_final.pth"
mkdir -p "$folder/validation"
touch "$folder/validation/summary.json"
"""


@pytest.fixture
def fake_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in nnUNetv2_train, put where array_script looks for nnU-Net's commands."""
    path = tmp_path / "bin" / "nnUNetv2_train"
    path.parent.mkdir()
    path.write_text(FAKE_TRAIN)
    path.chmod(0o755)
    monkeypatch.setattr(slurm, "nnunet_command", lambda name: str(path))
    return path


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "nnUNet results"  # a space, to hold the script's quoting to it
    path.mkdir()
    return path


def runs_of(results: Path, trainers: tuple[str, ...] = ("nnUNetTrainer", "nnUNetTrainerDCA"),
            folds: tuple[int, ...] = (0, 1)) -> list[Run]:
    return [Run(results, "Dataset004_Hippocampus", "2d", trainer, "nnUNetPlans", fold)
            for trainer in trainers for fold in folds]


def checkpoint(run: Run, name: str | Path) -> None:
    (run.fold_folder / name).parent.mkdir(parents=True, exist_ok=True)
    (run.fold_folder / name).touch()


def environment(results: Path) -> dict[str, str]:
    return {"nnUNet_raw": str(results.parent / "raw 'quoted'"), "nnUNet_results": str(results),
            "nnUNet_extTrainer": "/my/trainers:/their/trainers"}


def sbatch_lines(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def run_task(script: Path, task: int) -> subprocess.CompletedProcess:
    """Runs one array task as slurmd would, in an environment without nnU-Net's variables."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("nnUNet_")}
    return subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
                          capture_output=True, text=True)


def calls(run: Run) -> list[str]:
    path = run.fold_folder / "calls.txt"
    return path.read_text().splitlines() if path.is_file() else []


def test_sbatch_lines(results: Path, fake_train: Path, tmp_path: Path) -> None:
    options = SlurmOptions(partition="gpu", gres="gpu:1", time="24:00:00", array_limit=2,
                           sbatch_args=["--mem=32G", "--qos normal"], job_name="dca-study")
    script = array_script(runs_of(results), options, tmp_path / "logs", {}, command_line=["nnunet-dca", "compare", "4"])
    assert "#   nnunet-dca compare 4\n" in script
    assert sbatch_lines(script) == ["--job-name=dca-study", "--array=0-3%2", f"--output={tmp_path / 'logs'}/%A_%a.log",
                     "--partition=gpu", "--gres=gpu:1", "--time=24:00:00", "--mem=32G", "--qos normal"]
    # the cluster's defaults where nothing was asked for
    lines = sbatch_lines(array_script(runs_of(results), SlurmOptions(), tmp_path / "logs", {}))
    assert lines == ["--job-name=nnunet-dca", "--array=0-3", f"--output={tmp_path / 'logs'}/%A_%a.log"]


def test_only_runs_not_validated(results: Path, fake_train: Path, tmp_path: Path) -> None:
    runs = runs_of(results)
    checkpoint(runs[0], SUMMARY)  # validated, and copied without checkpoints
    checkpoint(runs[1], CHECKPOINT_LATEST)  # resumes: stays in
    checkpoint(runs[2], CHECKPOINT_FINAL)  # trained, its validation cut off: stays in
    script = array_script(runs, SlurmOptions(), tmp_path / "logs", {})
    assert "--array=0-2" in sbatch_lines(script)
    assert runs[0].label not in script and all(run.label in script for run in runs[1:])
    assert str(fake_train) in script
    for run in runs:
        checkpoint(run, SUMMARY)
    with pytest.raises(ValueError, match="no run left"):
        array_script(runs, SlurmOptions(), tmp_path / "logs", {})


def test_tasks_decide_at_run_time(results: Path, fake_train: Path, tmp_path: Path) -> None:
    """Each task trains its own run, resumes with --c from the latest checkpoint, validates with --val from the
    final one, skips a fold validated meanwhile."""
    runs = runs_of(results)
    env = environment(results)
    script = tmp_path / "train.sh"
    script.write_text(array_script(runs, SlurmOptions(), tmp_path / "logs", env, device="cpu"))
    checkpoint(runs[1], CHECKPOINT_LATEST)  # preempted after the script was written
    checkpoint(runs[2], SUMMARY)  # validated meanwhile (an earlier submission)
    checkpoint(runs[3], CHECKPOINT_FINAL)  # trained meanwhile, its validation cut off by the time limit
    for task in range(4):
        assert run_task(script, task).returncode == 0
    extras = f" | {env['nnUNet_raw']} | {env['nnUNet_extTrainer']}"
    assert calls(runs[0]) == [" ".join(runs[0].train_arguments("cpu")) + extras]
    assert calls(runs[1]) == [" ".join(runs[1].train_arguments("cpu") + ["--c"]) + extras]
    assert calls(runs[2]) == []
    assert calls(runs[3]) == [" ".join(runs[3].train_arguments("cpu") + ["--val"]) + extras]
    # run again (a resubmission): every fold is validated, nothing trains twice
    assert all(run_task(script, task).returncode == 0 for task in range(4))
    assert [len(calls(run)) for run in runs] == [1, 1, 0, 1]
    unknown = run_task(script, 4)
    assert unknown.returncode == 1 and "no run for array task 4" in unknown.stderr


def test_nnunet_environment() -> None:
    environ = {"nnUNet_raw": "/raw", "nnUNet_extTrainer": "/t", "nnUNet_n_proc_DA": "4", "PATH": "/bin"}
    assert nnunet_environment(environ) == {"nnUNet_raw": "/raw", "nnUNet_extTrainer": "/t", "nnUNet_n_proc_DA": "4"}


def test_submit_without_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match="sbatch not found on PATH"):
        submit(tmp_path / "train.sh")


def test_submit_quotes_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch's refusal in one line; its job id without the cluster name --parsable may add."""
    sbatch = tmp_path / "sbatch"
    sbatch.write_text('#!/bin/sh\necho "sbatch: error: invalid partition specified: gpu" >&2\n'
                      'echo "sbatch: error: Batch job submission failed" >&2\nexit 1\n')
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(SlurmError) as refused:
        submit(tmp_path / "train.sh")
    assert str(refused.value) == (f"sbatch refused {tmp_path / 'train.sh'}: sbatch: error: invalid partition "
                                  "specified: gpu sbatch: error: Batch job submission failed")
    sbatch.write_text("#!/bin/sh\necho '4711;cluster'\n")
    assert submit(tmp_path / "train.sh") == "4711"


def test_job_array_on_slurm(slurm_cluster: str, results: Path, fake_train: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A job array on a real SLURM: each task runs once, with its arguments and the script's nnU-Net folders."""
    runs = runs_of(results, folds=(0,)) + runs_of(results, trainers=("nnUNetTrainerDCA",), folds=(1,))
    env = environment(results)
    logs = tmp_path / "logs"
    logs.mkdir()
    script = tmp_path / "train.sh"
    script.write_text(array_script(runs, SlurmOptions(time="5:00", array_limit=2), logs, env))
    monkeypatch.setenv("nnUNet_raw", "/not/this/one")  # the tasks see the script's folders, not the submitter's
    job = submit(script)
    wait_for_job(job)
    extras = f" | {env['nnUNet_raw']} | {env['nnUNet_extTrainer']}"
    logged = {path.name: path.read_text() for path in logs.iterdir()}
    assert sorted(logged) == [f"{job}_{task}.log" for task in range(3)], logged
    for task, run in enumerate(runs):
        assert calls(run) == [" ".join(run.train_arguments()) + extras], logged[f"{job}_{task}.log"]
