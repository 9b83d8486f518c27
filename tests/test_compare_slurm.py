"""`nnunet-dca compare --train slurm`: the job array script, run by bash as SLURM would run each task and on a
one-node SLURM cluster (skipped where there is none), with a stand-in for nnUNetv2_train behind the tasks'
`nnunet-dca train-fold`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from nnunet_dca.compare import local, slurm
from nnunet_dca.compare.locks import lock_path
from nnunet_dca.compare.slurm import SlurmError, SlurmOptions, array_script, nnunet_environment, submit
from nnunet_dca.compare.study import CHECKPOINT_FINAL, CHECKPOINT_LATEST, DONE, SUMMARY, Run
from slurm_cluster import wait_for_job

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
trap 'kill $!; exit 143' TERM  # a training stopped by SIGTERM, its sleep with it
sleep "${FAKE_SECONDS:-0}" &
wait $!
touch "$folder/checkpoint_final.pth"
mkdir -p "$folder/validation"
touch "$folder/validation/summary.json"
"""


# nnunet-dca as the tasks run it, its train-fold running FAKE_TRAIN where it would run nnUNetv2_train
FAKE_NNUNET_DCA = """#!{python}
import sys
from nnunet_dca.cli import main
from nnunet_dca.compare import local
local.nnunet_command = lambda name: {train!r}
sys.exit(main())
"""


@pytest.fixture
def fake_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in nnUNetv2_train, behind an `nnunet-dca` put where array_script looks for it."""
    path = tmp_path / "bin" / "nnUNetv2_train"
    path.parent.mkdir()
    path.write_text(FAKE_TRAIN)
    nnunet_dca = path.with_name("nnunet-dca")
    nnunet_dca.write_text(FAKE_NNUNET_DCA.format(python=sys.executable, train=str(path)))
    for script in (path, nnunet_dca):
        script.chmod(0o755)
    monkeypatch.setattr(slurm, "nnunet_command", lambda name: str(path.with_name(name)))
    # the tasks' nnunet-dca runs on sys.executable, which imports the nnunet_dca installed in it: the one under test
    # (a PYTHONPATH of its site-packages would put the PyPI argparse that unittest2 installs before the stdlib's)
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


def submit_twice(script: Path) -> list[str]:
    """The job array submitted twice, at once, as by two users or a resubmission of tasks still running; returns
    the two job ids once every task of both has ended."""
    jobs = [submit(script), submit(script)]
    for job in jobs:
        wait_for_job(job)
    return jobs


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
    assert str(fake_train.with_name("nnunet-dca")) in script
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
    assert not list(results.rglob("*.lock"))  # each task released its fold's lock


def test_a_task_skips_a_fold_being_trained_elsewhere(results: Path, fake_train: Path, tmp_path: Path) -> None:
    run = runs_of(results)[0]
    script = tmp_path / "train.sh"
    script.write_text(array_script([run], SlurmOptions(), tmp_path / "logs", environment(results)))
    theirs = lock_path(run.fold_folder)
    theirs.parent.mkdir(parents=True)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    theirs.write_text(json.dumps({"host": "node7", "pid": 4711, "started": now, "heartbeat": now}))
    task = run_task(script, 0)
    assert task.returncode == 0 and calls(run) == []
    assert f"{run.label}: being trained by process 4711 on node7 since " in task.stdout, task.stdout + task.stderr
    theirs.unlink()  # their training has ended
    assert run_task(script, 0).returncode == 0 and len(calls(run)) == 1


def test_a_task_stopped_by_sigterm_stops_its_training_and_releases_the_lock(results: Path, fake_train: Path,
                                                                            tmp_path: Path) -> None:
    """SLURM sends SIGTERM at a time limit, a preemption or scancel."""
    run = runs_of(results)[0]
    script = tmp_path / "train.sh"
    script.write_text(array_script([run], SlurmOptions(), tmp_path / "logs", environment(results)))
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0", "FAKE_SECONDS": "60"}
    with open(tmp_path / "task.log", "w") as log:
        task = subprocess.Popen(["bash", str(script)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 50
        while not calls(run) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_path(run.fold_folder).is_file()
        task.terminate()
        assert task.wait(timeout=40) == 143, (tmp_path / "task.log").read_text()
    finally:
        task.kill()
    assert not lock_path(run.fold_folder).exists() and run.state != DONE
    assert "stopped: 1 running training(s) terminated" in (tmp_path / "task.log").read_text()


def test_a_second_sigterm_cannot_cut_the_cleanup_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first SIGTERM ends train-fold as Ctrl-C would; any later one is ignored while the lock is released."""
    handlers: list = []
    monkeypatch.setattr(signal, "signal", lambda signum, handler: handlers.append((signum, handler)))
    with pytest.raises(SystemExit) as ended:
        slurm._exit_on_sigterm(signal.SIGTERM, None)
    assert ended.value.code == 143 and handlers == [(signal.SIGTERM, signal.SIG_IGN)]
    assert local.TERMINATE_SECONDS < 30  # cleanup done before SLURM's default KillWait sends SIGKILL


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
        assert calls(run) == [" ".join(run.train_arguments("cuda")) + extras], logged[f"{job}_{task}.log"]


def test_the_job_array_submitted_twice_trains_each_fold_once(slurm_cluster: str, results: Path, fake_train: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two arrays of the same folds at once: the tasks of the second find the folds locked (or validated)."""
    runs = runs_of(results)
    logs = tmp_path / "logs"
    logs.mkdir()
    script = tmp_path / "train.sh"
    script.write_text(array_script(runs, SlurmOptions(time="5:00"), logs, environment(results), device="cpu"))
    monkeypatch.setenv("FAKE_SECONDS", "10")  # sbatch passes the submitter's environment on: trainings overlap
    jobs = submit_twice(script)
    logged = "\n".join(path.read_text() for path in sorted(logs.iterdir()))
    assert len(list(logs.iterdir())) == 2 * len(runs), logged
    assert [len(calls(run)) for run in runs] == [1] * len(runs), logged
    assert all(run.state == DONE for run in runs) and not list(results.rglob("*.lock")), logged
    assert logged.count("[started 1/1]") == len(runs), f"jobs {jobs}:\n{logged}"  # the other tasks skipped
