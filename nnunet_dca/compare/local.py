"""`nnunet-dca compare --train local`: what is missing of a study, trained here with nnU-Net's own nnUNetv2_train.

A validated fold (validation/summary.json) is done and skipped, one with checkpoint_final.pth but no summary is
validated with --val, one with only checkpoint_latest.pth resumes with --c, any other starts fresh; so an
interrupted comparison, run again, trains nothing twice. Each training holds its fold's lock (locks.py), so
comparisons and SLURM tasks running at the same time never train one fold twice. With GPUs, one training runs on
each GPU at a time; without, one runs at a time on the given device.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence, TextIO

from nnunet_dca.compare.locks import FoldLock, LockHeld, acquire, lock_path
from nnunet_dca.compare.study import CONTINUE_OPTIONS, DONE, RESUME, VALIDATE, Run
from nnunet_dca.demo import nnunet_command

POLL_SECONDS = 1.0  # how often the running trainings are checked; trainings take minutes to days
# how long a training may take to exit after Ctrl-C or SIGTERM before it is killed: 20 s, under SLURM's default
# KillWait of 30 s between a task's SIGTERM and its SIGKILL, so train-fold has time left to release the fold's lock
TERMINATE_SECONDS = 20.0
STARTED_WORDS = {VALIDATE: " (validation only, --val)", RESUME: " (resumes with --c)"}


@dataclass
class _Job:
    run: Run
    process: subprocess.Popen
    lock: FoldLock
    log: Path | None
    log_file: TextIO | None
    start: float

    def end(self) -> None:
        """After the training's process has ended: its fold's lock released, its log closed."""
        self.lock.release()
        if self.log_file is not None:
            self.log_file.close()


def run_local(runs: Sequence[Run], device: str, gpus: Sequence[str] | None, logs: Path | None,
              env: Mapping[str, str] | None = None, echo: Callable[[str], None] = print) -> dict[Run, int]:
    """Trains every run that is not done with `nnUNetv2_train ... --npz` (with `--val` or `--c` as CONTINUE_OPTIONS
    says for its state) and returns each trained run's exit code; runs done before or while waiting are skipped and
    not in the result.

    When a run's turn comes, its fold's lock is taken and its state read again: another comparison or a SLURM task
    may have finished it. A run whose lock another live process holds is skipped, naming the holder; the lock is
    released when the training ends.
    With `gpus`, one training per GPU at a time, each seeing only its GPU (CUDA_VISIBLE_DEVICES) with -device cuda;
    without, one at a time with -device `device`. Each training's output is appended to a log file in `logs`, or
    goes to this process's output with `logs` None. A failed training does not stop the others. Ctrl-C terminates
    the running trainings (the next run resumes them from checkpoint_latest.pth) and is raised again. `env`: the
    environment of the trainings (default os.environ).
    """
    train = nnunet_command("nnUNetv2_train")
    to_train = [run for run in runs if run.state != DONE]
    total = len(to_train)
    echo(f"{len(runs) - total} of {len(runs)} trainings already done, {total} to train")
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    waiting = deque(enumerate(to_train, start=1))
    slots: list[str | None] = list(gpus) if gpus else [None]
    running: dict[str | None, _Job] = {}
    exit_codes: dict[Run, int] = {}
    skipped = held = unlockable = 0
    try:
        while waiting or running:
            for gpu in slots:
                while gpu not in running and waiting:
                    number, run = waiting.popleft()
                    path = lock_path(run.fold_folder)
                    try:
                        lock = acquire(path, echo)
                    except LockHeld as busy:
                        held += 1
                        echo(f"[skipped {number}/{total}] {run.label}: being trained by {busy.holder} "
                             f"(lock {busy.path})")
                        continue
                    except (OSError, ValueError) as error:  # a read-only or full filesystem, say: the others may go
                        unlockable += 1
                        echo(f"[skipped {number}/{total}] {run.label}: cannot take the lock {path}: {error}")
                        continue
                    state = run.state  # read under the lock: a holder before may have finished the fold
                    if state == DONE:
                        lock.release()
                        skipped += 1
                        echo(f"[skipped {number}/{total}] {run.label}: validated meanwhile, by another comparison "
                             f"or a SLURM task")
                        continue
                    option = CONTINUE_OPTIONS.get(state)
                    command = [train, *run.train_arguments("cuda" if gpu is not None else device),
                               *([option] if option else [])]
                    running[gpu] = _start(run, command, _environment(env, gpu), lock, logs)
                    echo(f"[started {number}/{total}] {run.label}{STARTED_WORDS.get(state, '')} on "
                         f"{device if gpu is None else f'GPU {gpu}'}")
            time.sleep(POLL_SECONDS)
            for gpu, job in list(running.items()):
                if job.process.poll() is not None:
                    del running[gpu]
                    job.end()
                    exit_codes[job.run] = job.process.returncode
                    done = len(exit_codes) + skipped + held + unlockable
                    echo(f"[finished {done}/{total}] {job.run.label} {_outcome(job)}")
    except BaseException:  # Ctrl-C above all: no training may outlive the command that started it
        for job in running.values():
            job.process.terminate()
        for job in running.values():
            try:
                job.process.wait(TERMINATE_SECONDS)
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
            job.end()
        echo(f"stopped: {len(running)} running training(s) terminated; run the same command again to resume")
        raise
    failed = sum(code != 0 for code in exit_codes.values())
    echo(f"{len(exit_codes) - failed} of {total} trainings finished"
         + (f", {skipped} validated meanwhile elsewhere" if skipped else "")
         + (f", {held} being trained elsewhere" if held else "")
         + (f", {unlockable} not started (lock error)" if unlockable else "")
         + (f", {failed} FAILED" if failed else ""))
    return exit_codes


def _environment(env: Mapping[str, str] | None, gpu: str | None) -> dict[str, str]:
    environment = dict(os.environ if env is None else env)
    if gpu is not None:
        environment["CUDA_VISIBLE_DEVICES"] = gpu
    return environment


def _start(run: Run, command: list[str], environment: dict[str, str], lock: FoldLock, logs: Path | None) -> _Job:
    name = f"{run.dataset}__{run.trainer}__{run.plans}__{run.configuration}__fold_{run.fold}.log"
    log = logs / name if logs else None
    try:
        # appended: the log of an interrupted attempt stays above the one that resumes it
        log_file = open(log, "a") if log else None
        print(f"$ {' '.join(command)}", file=log_file, flush=True)  # file None: this process's output
        process = subprocess.Popen(command, env=environment, stdout=log_file, stderr=subprocess.STDOUT)
    except BaseException:  # no training started: nothing may keep its fold locked
        lock.release()
        raise
    return _Job(run, process, lock, log, log_file, time.monotonic())


def _outcome(job: _Job) -> str:
    code = job.process.returncode
    if code != 0:
        return f"FAILED (exit {code})" + (f", log: {job.log}" if job.log else "")
    seconds = time.monotonic() - job.start
    if seconds < 60:
        return f"ok in {seconds:.0f} s"
    if seconds < 3600:
        return f"ok in {seconds / 60:.0f} min"
    return f"ok in {seconds / 3600:.1f} h"
