"""compare's fold locks (nnunet_dca/compare/locks.py): taken, refused, taken over, raced for; no training."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from nnunet_dca.compare import locks
from nnunet_dca.compare.locks import LockHeld, acquire, lock_path

HOST = socket.gethostname()


@pytest.fixture
def path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The lock of a fold whose model folder does not exist yet; outside SLURM."""
    for name in locks.SLURM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return lock_path(tmp_path / "nnUNet_results" / "Dataset001_A" / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0")


def write_lock(path: Path, host: str = "elsewhere", pid: int = 1, minutes_ago: float = 0, **fields: object) -> dict:
    """A lock another holder left, its heartbeat `minutes_ago`; on this host with this process's boot id and PID
    namespace, as acquire writes them (a field given as None is left out). Returns the record written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    beat = (datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)).isoformat(timespec="seconds")
    record = {"host": host, "pid": pid, **(locks._process_namespace() if host == HOST else {}), "started": beat,
              "heartbeat": beat, **fields}
    record = {name: value for name, value in record.items() if value is not None}
    path.write_text(json.dumps(record))
    return record


def since(record: dict) -> str:
    """The start of a written lock as the messages give it: local time, to the minute."""
    return datetime.fromisoformat(record["started"]).astimezone().strftime("%Y-%m-%d %H:%M")


def ended_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    (tmp_path / "bin").mkdir()
    squeue = tmp_path / "bin" / "squeue"
    squeue.write_text(f"#!/bin/sh\n{script}\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{squeue.parent}:{os.environ['PATH']}")


def test_acquire_writes_the_holder_beside_the_fold_and_release_removes_it(path):
    lock = acquire(path)
    assert path.name == "fold_0.nnunet-dca.lock" and path.parent.is_dir()  # the model folder, made for the lock
    record = json.loads(path.read_text())
    assert (record["host"], record["pid"]) == (HOST, os.getpid())
    assert {name: record[name] for name in ("boot_id", "pid_namespace") if name in record} == locks._process_namespace()
    assert record["started"] == record["heartbeat"] and record["started"].endswith("+00:00")
    lock.release()
    assert list(path.parent.iterdir()) == []
    acquire(path).release()


def test_a_held_lock_is_refused_naming_its_holder(path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4712")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4711")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setattr(locks, "_slurm_job_ended", lambda job: False)
    lock = acquire(path)
    with pytest.raises(LockHeld) as held:
        acquire(path)
    since = datetime.now().strftime("%Y-%m-%d")
    assert held.value.holder.startswith(f"process {os.getpid()} on {HOST} (SLURM job 4711_3) since {since} ")
    assert held.value.path == path
    lock.release()


def test_a_lock_of_a_process_alive_elsewhere_is_refused(path):
    write_lock(path, minutes_ago=9)
    with pytest.raises(LockHeld, match="is held by process 1 on elsewhere since"):
        acquire(path)


def test_a_lock_of_an_ended_process_on_this_host_is_taken_over(path):
    pid = ended_pid()
    record = write_lock(path, HOST, pid)
    lines = []
    lock = acquire(path, lines.append)
    assert lines == [f"taking over the lock {path} of process {pid} on {HOST} since {since(record)}: "
                     f"that process has ended"]
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert list(path.parent.iterdir()) == []  # the stale lock set aside is gone too


@pytest.mark.skipif(len(locks._process_namespace()) < 2, reason="no boot id or PID namespace in /proc")
def test_a_live_process_on_this_host_holds_its_lock_however_old_its_heartbeat(path):
    write_lock(path, HOST, os.getpid(), minutes_ago=60)  # paused for an hour, say
    with pytest.raises(LockHeld, match=f"is held by process {os.getpid()} on "):
        acquire(path)


@pytest.mark.parametrize("namespace", [{"boot_id": None, "pid_namespace": None}, {"pid_namespace": "pid:[1]"},
                                       {"boot_id": "another boot"}], ids=["absent", "other container", "rebooted"])
def test_a_process_of_another_pid_namespace_or_boot_is_judged_by_its_heartbeat(path, namespace):
    pid = ended_pid()  # no process here: it names another or none there
    write_lock(path, HOST, pid, **namespace)
    with pytest.raises(LockHeld, match=f"is held by process {pid} on "):
        acquire(path)
    write_lock(path, HOST, os.getpid(), minutes_ago=11, **namespace)
    lines = []
    acquire(path, lines.append).release()
    assert len(lines) == 1 and lines[0].endswith(": no heartbeat for 11 min (stale after 10)")


def age_and_acquire(path) -> list[str]:
    """Ages the lock file past STALE_SECONDS, takes the lock over and releases it; returns the lines said."""
    old = time.time() - locks.STALE_SECONDS - 60
    os.utime(path, (old, old))
    lines = []
    acquire(path, lines.append).release()
    return lines


@pytest.mark.parametrize("damage", [{"slurm_restart_count": "x"}, {"slurm_restart_count": "1", "slurm_job_id": 4712},
                                    {"started": "yesterday"}, {"pid": 0}, {"pid": "4711"}, {"boot_id": 7}])
def test_a_lock_with_a_damaged_field_is_an_unknown_holders_judged_by_its_age(path, monkeypatch, damage):
    monkeypatch.setattr(locks, "_slurm_job_ended", lambda job: False)
    monkeypatch.setenv("SLURM_JOB_ID", "4712")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    write_lock(path, **{"slurm_job_id": "4712", **damage})
    with pytest.raises(LockHeld, match="an unknown process"):
        acquire(path)
    lines = age_and_acquire(path)
    assert len(lines) == 1 and "an unknown process" in lines[0] and "no heartbeat for 11 min" in lines[0]


def test_a_lock_that_cannot_be_written_is_not_left_behind(path, monkeypatch):
    def full(fd, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(locks, "_write", full)
    with pytest.raises(OSError, match="No space left"):
        acquire(path)
    assert not path.exists()


def test_a_lock_without_heartbeat_for_ten_minutes_is_taken_over(path):
    write_lock(path, minutes_ago=11)
    lines = []
    acquire(path, lines.append).release()
    assert len(lines) == 1 and lines[0].endswith(": no heartbeat for 11 min (stale after 10)")


def test_an_unreadable_lock_is_judged_by_its_age(path):
    path.parent.mkdir(parents=True)
    path.write_text("")  # as its creator leaves it for a moment, or dies leaving it
    with pytest.raises(LockHeld, match="an unknown process"):
        acquire(path)
    assert "no heartbeat for 11 min" in age_and_acquire(path)[0]


@pytest.mark.parametrize("squeue, ended", [("echo COMPLETED", True), ("echo RUNNING", False),
                                           ("echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1", True),
                                           ("echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; "
                                            "exit 1", False)])
def test_a_lock_of_an_ended_slurm_job_is_taken_over(path, tmp_path, monkeypatch, squeue, ended):
    fake_squeue(tmp_path, monkeypatch, squeue)
    record = write_lock(path, slurm_job_id="4712", slurm_array_job_id="4711", slurm_array_task_id="3")
    if ended:
        lines = []
        acquire(path, lines.append).release()
        assert lines[0].endswith(f"of process 1 on elsewhere (SLURM job 4711_3) since {since(record)}: "
                                 f"SLURM job 4711_3 has ended")
    else:  # squeue says running, or cannot say: the heartbeat decides
        with pytest.raises(LockHeld, match=r"\(SLURM job 4711_3\)"):
            acquire(path)


def test_without_squeue_a_slurm_lock_is_judged_by_its_heartbeat(path, monkeypatch):
    monkeypatch.setattr(locks.shutil, "which", lambda name: None)
    write_lock(path, slurm_job_id="4712")
    with pytest.raises(LockHeld, match=r"\(SLURM job 4712\)"):
        acquire(path)


def test_a_requeued_task_takes_over_its_earlier_run(path, monkeypatch):
    monkeypatch.setattr(locks, "_slurm_job_ended", lambda job: False)  # the job runs: it is this one
    monkeypatch.setenv("SLURM_JOB_ID", "4712")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    write_lock(path, slurm_job_id="4712")
    lines = []
    acquire(path, lines.append).release()
    assert lines[0].endswith("it was an earlier run of this SLURM task, requeued since")


def test_the_heartbeat_rewrites_the_lock(path, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_SECONDS", 0.05)
    lock = acquire(path)
    written = path.stat().st_mtime_ns
    deadline = time.monotonic() + 10
    while path.stat().st_mtime_ns == written and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.stat().st_mtime_ns != written
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_release_leaves_a_lock_taken_over_meanwhile(path):
    lock = acquire(path)
    path.unlink()  # as a takeover that judged it stale sets it aside
    theirs = acquire(path)
    lock.release()
    assert path.is_file()
    theirs.release()
    assert not path.exists()


RACER = """
import sys, time
from pathlib import Path
from nnunet_dca.compare.locks import LockHeld, acquire

lock, folder, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(folder / f"{name}.ready").touch()
while not (folder / "go").exists():
    time.sleep(0.001)
try:
    held = acquire(lock)
except LockHeld:
    (folder / f"{name}.held").touch()
else:
    (folder / f"{name}.won").touch()
    while not (folder / "done").exists():  # held until every racer has tried
        time.sleep(0.01)
    held.release()
"""


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_of_processes_racing_for_one_lock_exactly_one_wins(path, tmp_path, stale):
    racers = 8
    folder = tmp_path / "race"
    folder.mkdir()
    if stale:
        write_lock(path, minutes_ago=30)
    # sys.executable imports the nnunet_dca installed in it, which is the one under test
    processes = [subprocess.Popen([sys.executable, "-c", RACER, str(path), str(folder), str(number)],
                                  stdout=subprocess.PIPE, text=True) for number in range(racers)]
    try:
        deadline = time.monotonic() + 50
        while len(list(folder.glob("*.ready"))) < racers and time.monotonic() < deadline:
            time.sleep(0.01)
        (folder / "go").touch()
        while len(list(folder.glob("*.won")) + list(folder.glob("*.held"))) < racers and time.monotonic() < deadline:
            time.sleep(0.01)
        (folder / "done").touch()
        outputs = [process.communicate(timeout=20)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert len(list(folder.glob("*.won"))) == 1 and len(list(folder.glob("*.held"))) == racers - 1
    takeovers = [line for output in outputs for line in output.splitlines() if line.startswith("taking over")]
    assert len(takeovers) == (1 if stale else 0)
    assert not path.exists() and list(path.parent.iterdir()) == []
