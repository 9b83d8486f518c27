"""Training on a SLURM cluster: one sbatch job array, one task per run still missing, each task nnU-Net's own
`nnUNetv2_train` under its fold's lock (`nnunet-dca train-fold`, as `--train local` trains a run), validated with
--val where the final checkpoint exists and resumed with --c where only the latest one does."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from nnunet_dca.compare.local import run_local
from nnunet_dca.compare.locks import LOCK_SUFFIX
from nnunet_dca.compare.study import (
    CHECKPOINT_FINAL,
    CHECKPOINT_LATEST,
    CONTINUE_OPTIONS,
    DONE,
    RESUME,
    SUMMARY,
    VALIDATE,
    Run,
)
from nnunet_dca.demo import nnunet_command


class SlurmError(RuntimeError):
    """sbatch is missing or refused the job; one line, with sbatch's own message."""


@dataclass
class SlurmOptions:
    """The #SBATCH lines of the job array; None leaves the cluster's default."""

    partition: str | None = None
    gres: str | None = None  # e.g. gpu:1
    time: str | None = None  # per task, in sbatch's format, e.g. 24:00:00
    array_limit: int | None = None  # at most this many tasks at once (sbatch's --array=...%N)
    sbatch_args: Sequence[str] = ()  # further #SBATCH lines, verbatim, e.g. --mem=32G
    job_name: str = "nnunet-dca"


def nnunet_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables nnU-Net reads (its folders, nnUNet_extTrainer, nnUNet_n_proc_DA, ...): every nnUNet_* one."""
    return {name: value for name, value in environ.items() if name.startswith("nnUNet_")}


def array_script(runs: Sequence[Run], options: SlurmOptions, logs: Path, environment: Mapping[str, str],
                 device: str = "cuda", command_line: Sequence[str] = ()) -> str:
    """A bash script for sbatch: a job array with one task per run that is not done, in the order given.

    The script exports `environment` (nnU-Net's variables as they were when it was written), so submitting it
    again later, from another shell, trains into the same folders. Each task runs `nnunet-dca train-fold`
    (train_fold): it takes its fold's lock, skipping a fold another live process trains, then looks at the fold as
    Run.state does: validated meanwhile, it exits; with the final checkpoint but no summary (a validation cut off),
    it validates with --val; with the latest checkpoint (a requeued or preempted task), it resumes with --c.
    `logs` must exist when the job starts: SLURM does not create the folder of --output.
    `command_line`, the command that wrote the script, goes into its header comment.
    """
    runs = [run for run in runs if run.state != DONE]
    if not runs:
        raise ValueError(f"no run left to train: every fold has its {SUMMARY}")
    limit = f"%{options.array_limit}" if options.array_limit else ""
    sbatch = [f"--job-name={options.job_name}", f"--array=0-{len(runs) - 1}{limit}",
              f"--output={logs.absolute() / '%A_%a.log'}"]
    sbatch += [f"--{name}={value}" for name, value in
               [("partition", options.partition), ("gres", options.gres), ("time", options.time)] if value]
    sbatch += list(options.sbatch_args)
    lines = [
        "#!/bin/bash",
        "# nnU-Net training for a comparison, written by `nnunet-dca compare --train slurm`"
        + (f":\n#   {shlex.join(command_line)}" if command_line else "."),
        f"# One array task per run still missing ({len(runs)} in all, the case list below), each nnUNetv2_train",
        f"# under the fold's lock (fold_N{LOCK_SUFFIX} in the model folder): a fold another live process trains",
        f"# is skipped. When its task starts, a fold with {SUMMARY} is skipped, one with {CHECKPOINT_FINAL} is",
        f"# validated ({CONTINUE_OPTIONS[VALIDATE]}), one with {CHECKPOINT_LATEST} resumes "
        f"({CONTINUE_OPTIONS[RESUME]}).",
        "# Submitting this script again as it is (sbatch <this file>) trains only what is missing.",
        "# When the tasks have ended, the same `nnunet-dca compare` without --train writes the report.",
        *(f"#SBATCH {argument}" for argument in sbatch),
        "",
        "set -euo pipefail",
        "",
        "# nnU-Net's folders and settings as they were when this script was written",
        *(f"export {name}={shlex.quote(value)}" for name, value in environment.items()),
        "",
        f"nnunet_dca={shlex.quote(nnunet_command('nnunet-dca'))}",
        'case "$SLURM_ARRAY_TASK_ID" in',
    ]
    for task, run in enumerate(runs):
        arguments = shlex.join([run.dataset, run.configuration, str(run.fold), "-tr", run.trainer, "-p", run.plans,
                                "-device", device])
        lines += [f"    {task})  # {run.label}",
                  f"        arguments=({arguments}) ;;"]
    lines += [
        '    *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;',
        "esac",
        'exec "$nnunet_dca" train-fold "${arguments[@]}"',
    ]
    return "\n".join(lines) + "\n"


def train_fold(run: Run, device: str) -> int:
    """What one array task runs (`nnunet-dca train-fold`): the run trained as `--train local` trains it, under its
    fold's lock, nnU-Net's output into the task's log. Returns 1 if the training failed, else 0 (also where the
    fold was validated or is being trained elsewhere)."""
    # a time limit, a preemption or scancel sends SIGTERM: stop the training as Ctrl-C does, releasing the lock
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    exit_codes = run_local([run], device, None, None)
    return 1 if any(code != 0 for code in exit_codes.values()) else 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Ends train-fold as Ctrl-C would, once: a second SIGTERM (scancel twice, say) is ignored, so it cannot cut
    short the cleanup that stops the training and releases the fold's lock (local.TERMINATE_SECONDS, under SLURM's
    default KillWait of 30 s)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)  # the exit status a shell reports for a command ended by the signal


def submit(script: Path) -> str:
    """Submits `script` with sbatch; returns the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError(f"sbatch not found on PATH: submit {script} from a SLURM login node (sbatch {script})")
    result = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        message = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        raise SlurmError(f"sbatch refused {script}: {message}")
    return result.stdout.strip().split(";")[0]  # --parsable prints jobid[;cluster]
