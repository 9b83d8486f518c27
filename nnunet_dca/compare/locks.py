"""One training per fold at a time: a lock file beside the fold that every compare process and SLURM task honours,
also between nodes on a shared filesystem (NFS, Lustre), where flock may lock per host only.

The lock of MODEL_FOLDER/fold_N is MODEL_FOLDER/fold_N.nnunet-dca.lock, created with O_CREAT | O_EXCL (atomic on
local filesystems, NFS v3 and later, and Lustre). It holds JSON: host, pid, the host's boot id and the PID
namespace (where /proc tells them), the SLURM job if any (SLURM_JOB_ID, SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID,
SLURM_RESTART_COUNT), and the start and heartbeat times (UTC), the heartbeat rewritten every HEARTBEAT_SECONDS by a
thread of the holder. A lock whose holder is gone is taken over: its process has ended (on this host, since this
boot, in this PID namespace), its SLURM job has ended (squeue, where there is one), it is an earlier run of this
very SLURM task (requeued since), or its heartbeat is older than STALE_SECONDS. A holder whose process is alive on
this host (same boot, same PID namespace) holds the lock however old its heartbeat: a paused process is not stale.
A lock whose record cannot be read, or has a field that is not what the holder writes, is an unknown holder's:
judged by the file's age.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Callable

LOCK_SUFFIX = ".nnunet-dca.lock"
HEARTBEAT_SECONDS = 60.0
# ten missed heartbeats: far more than an NFS hiccup or clocks a little apart, far less than a training
STALE_SECONDS = 600.0
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
# squeue -j lists a job for a few minutes after it ended, in one of these states
ENDED_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "TIMEOUT"}
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
PID_MAX = 2**31 - 1  # os.kill takes a C int; pid_max is at most 2**22 on Linux


class LockHeld(Exception):
    """The lock is held by a holder that may be alive (`holder` names it)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


def lock_path(fold_folder: Path) -> Path:
    """The lock of a fold: beside the fold folder, in the model folder."""
    return fold_folder.with_name(fold_folder.name + LOCK_SUFFIX)


class FoldLock:
    """A lock this process holds; its heartbeat is refreshed until release()."""

    def __init__(self, path: Path, fd: int, record: dict) -> None:
        self.path, self._fd, self._record = path, fd, record
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"heartbeat of {path.name}", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self._record["heartbeat"] = _now()
            try:
                _write(self._fd, self._record)
            except OSError:  # a filesystem hiccup: the next beat tries again, long before the lock counts as stale
                pass

    def release(self) -> None:
        """Stops the heartbeat and removes the lock file, unless it was taken over as stale meanwhile."""
        self._stop.set()
        self._heartbeat.join()
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:  # the file at the path is still this lock
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)


def acquire(path: Path, echo: Callable[[str], None] = print) -> FoldLock:
    """Takes the lock at `path` (creating its folder, the model folder nnUNetv2_train would create), taking over a
    lock whose holder is gone with a line to `echo`; raises LockHeld if a holder that may be alive has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        record = {"host": socket.gethostname(), "pid": os.getpid(), **_process_namespace(),
                  **{name.lower(): os.environ[name] for name in SLURM_VARIABLES if name in os.environ},
                  "started": _now()}
        record["heartbeat"] = record["started"]
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            try:
                _write(fd, record)
            except BaseException:  # a full or read-only filesystem, say: no empty lock left behind
                os.close(fd)
                os.unlink(path)
                raise
            return FoldLock(path, fd, record)
        try:
            found, judged = _read(path)
        except FileNotFoundError:
            continue  # released meanwhile: try again
        holder = _holder(found, judged)
        reason = _why_gone(found, judged)
        if reason is None:
            raise LockHeld(path, holder)
        if _remove_stale(path, judged):
            echo(f"taking over the lock {path} of {holder}: {reason}")
        # removed here or by another process taking over at the same time: the next round creates it or finds theirs


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write(fd: int, record: dict) -> None:
    data = json.dumps(record, indent=2).encode() + b"\n"
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)
    os.ftruncate(fd, len(data))
    os.fsync(fd)  # on NFS, other hosts read what has reached the server


def _read(path: Path) -> tuple[dict, os.stat_result]:
    """The lock's record and its stat. The record is {} (an unknown holder, judged by the file's age) where it
    cannot be read (being written by its creator, or damaged) or a field used later is not as acquire writes it."""
    with open(path, "rb") as file:
        stat = os.fstat(file.fileno())
        text = file.read()
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise TypeError("not a JSON object")
        if not isinstance(record["host"], str):
            raise TypeError("host is not a string")
        for name in ("boot_id", "pid_namespace", *(variable.lower() for variable in SLURM_VARIABLES)):
            if name in record and not isinstance(record[name], str):
                raise TypeError(f"{name} is not a string")
        pid = record["pid"]
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= PID_MAX:  # os.kill(0 or -1): a group
            raise ValueError("pid is not a process id")
        _time(record["heartbeat"])
        _time(record.get("started", record["heartbeat"]))
        int(record.get("slurm_restart_count", 0))
    except (ValueError, KeyError, TypeError):
        return {}, stat
    return record, stat


def _time(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _local(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")


def _slurm_job(record: dict) -> str | None:
    """The holder's SLURM job as squeue names it: JOB_TASK for an array task, else the job id."""
    if "slurm_array_job_id" in record and "slurm_array_task_id" in record:
        return f"{record['slurm_array_job_id']}_{record['slurm_array_task_id']}"
    return record.get("slurm_job_id")


def _holder(record: dict, stat: os.stat_result) -> str:
    if not record:
        return f"an unknown process (the lock file is unreadable, last written {_local(stat.st_mtime)})"
    job = _slurm_job(record)
    return (f"process {record['pid']} on {record['host']}" + (f" (SLURM job {job})" if job else "")
            + f" since {_local(_time(record.get('started', record['heartbeat'])))}")


def _why_gone(record: dict, stat: os.stat_result) -> str | None:
    """Why the holder of a lock is gone, or None while it may be alive."""
    alive = _process_alive(record)
    if alive is False:
        return "that process has ended"
    job = _slurm_job(record)
    if job:
        if (record.get("slurm_job_id") == os.environ.get("SLURM_JOB_ID")
                and int(record.get("slurm_restart_count", 0)) < int(os.environ.get("SLURM_RESTART_COUNT", 0))):
            return "it was an earlier run of this SLURM task, requeued since"
        if _slurm_job_ended(job):
            return f"SLURM job {job} has ended"
    if alive:  # paused (SIGSTOP, a debugger, a suspended job) or its heartbeat thread stuck: not stale
        return None
    heartbeat = _time(record["heartbeat"]) if record else stat.st_mtime
    silent = time.time() - heartbeat
    if silent > STALE_SECONDS:
        return f"no heartbeat for {silent / 60:.0f} min (stale after {STALE_SECONDS / 60:.0f})"
    return None


def _process_alive(record: dict) -> bool | None:
    """Whether the holder's process is alive (os.kill(pid, 0)), or None where this process cannot tell: the holder
    is on another host, or its record lacks or differs in boot id or PID namespace (a reboot, another container
    with the same hostname), where its pid names another process or none."""
    namespace = _process_namespace()
    if (not record or record["host"] != socket.gethostname() or len(namespace) < 2
            or any(record.get(name) != value for name, value in namespace.items())):
        return None
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


@lru_cache(maxsize=None)
def _process_namespace() -> dict[str, str]:
    """This process's boot_id (the host's, new at each boot) and pid_namespace (os.readlink of /proc/self/ns/pid),
    each only where it can be read (not on macOS, say)."""
    found: dict[str, str] = {}
    try:
        found["boot_id"] = BOOT_ID_FILE.read_text().strip()
    except OSError:
        pass
    try:
        found["pid_namespace"] = os.readlink("/proc/self/ns/pid")
    except OSError:
        pass
    return found


def _slurm_job_ended(job: str) -> bool:
    """Whether squeue says the job has ended; False where there is no squeue or it does not answer (the heartbeat
    decides then)."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return False
    try:
        result = subprocess.run([squeue, "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if result.returncode != 0:  # a job slurmctld has forgotten is an invalid id; anything else: no answer
        return "Invalid job id" in result.stderr
    return set(result.stdout.split()) <= ENDED_STATES  # nothing listed: ended


def _remove_stale(path: Path, judged: os.stat_result) -> bool:
    """Removes the lock judged stale from `judged`; False where another process took it over first.

    Two processes may take over one stale lock at once: each renames the lock at `path` to a name of its own, so
    only one of them moves the stale lock. The other may move the fresh lock the first has made meanwhile; it finds
    that lock is not the one it judged and links it back (atomic, and refused where a lock exists at `path` again).
    """
    try:
        if _identity(os.stat(path)) != _identity(judged):  # the holder beat, or another process took over meanwhile
            return False
    except FileNotFoundError:
        return False
    aside = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    moved = _identity(os.stat(aside))
    if moved != _identity(judged):
        try:
            os.link(aside, path)
        except FileExistsError:  # a third process has made a lock since: it holds the fold
            pass
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


def _identity(stat: os.stat_result) -> tuple[int, int]:
    # a heartbeat changes the mtime, a new lock the inode (or, were an inode reused, the mtime)
    return stat.st_ino, stat.st_mtime_ns
