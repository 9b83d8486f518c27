"""`nnunet-dca compare` from start to end: the study checked against nnU-Net's folders, what is missing trained
(here, or as a SLURM job array), and the report of whatever has finished."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from nnunet_dca.compare import TRAIN_MODES
from nnunet_dca.compare.local import run_local
from nnunet_dca.compare.report import write_report
from nnunet_dca.compare.results import check_same_splits
from nnunet_dca.compare.slurm import SlurmOptions, array_script, nnunet_environment, submit
from nnunet_dca.compare.study import DONE, Study, check_preprocessed, resolve_study
from nnunet_dca.trainers import ext_trainer_value

SLURM_SCRIPT = "compare.sbatch"


def compare(datasets: Sequence[str], configurations: Sequence[str], trainers: Sequence[str], folds: Sequence[int],
            plans: str, out: Path, train: str = "none", device: str = "cuda", gpus: Sequence[str] | None = None,
            slurm: SlurmOptions | None = None, dry_run: bool = False, command_line: Sequence[str] = (),
            echo: Callable[[str], None] = print) -> int:
    """Checks the study, trains what is missing as `train` says ('none', 'local' or 'slurm'), writes the report
    into `out` and returns the number of local trainings that failed.

    Everything written goes under `out` (report, figures, training logs, the SLURM script); nnUNet_results changes
    only through nnUNetv2_train and the folds' locks while they train (locks.py). Raises StudyError or SlurmError
    (one line) for what the user has to fix.
    """
    if train not in TRAIN_MODES:
        raise ValueError(f"--train must be one of {', '.join(TRAIN_MODES)}, got {train!r}")
    # the trainings, the SLURM tasks and nnU-Net's trainer search here all find this package's trainers, as after
    # `export nnUNet_extTrainer="$(nnunet-dca trainer-dir --export)"`, with the user's own folders kept
    os.environ["nnUNet_extTrainer"] = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))
    study = resolve_study(datasets, configurations, trainers, folds, plans)
    failed = 0
    if train != "none":
        check_preprocessed(study)
        check_same_splits(study)  # before hours of training whose folds could not be paired
    if train == "local":
        exit_codes = run_local(study.runs(), device, gpus, out / "logs", echo=echo)
        failed = sum(code != 0 for code in exit_codes.values())
    elif train == "slurm":
        _train_on_slurm(study, out, device, slurm or SlurmOptions(), dry_run, command_line, echo)
    report = write_report(study, out)
    echo(f"Report: {report} (report.json beside it holds every number)")
    return failed


def _train_on_slurm(study: Study, out: Path, device: str, options: SlurmOptions, dry_run: bool,
                    command_line: Sequence[str], echo: Callable[[str], None]) -> None:
    runs = study.runs()
    missing = [run for run in runs if run.state != DONE]
    if not missing:
        echo(f"All {len(runs)} trainings are done and validated: nothing to submit")
        return
    logs = out / "slurm"
    script = array_script(missing, options, logs, nnunet_environment(), device, command_line)
    if dry_run:
        echo(script)
        return
    logs.mkdir(parents=True, exist_ok=True)  # sbatch writes the tasks' output there, and does not create it
    script_file = logs / SLURM_SCRIPT
    script_file.write_text(script)
    job = submit(script_file)
    echo(f"Submitted job array {job}: {len(missing)} of {len(runs)} trainings ({script_file}, task logs in {logs}). "
         f"Run the same command without --train when they have ended, for the report of all of them.")
