"""A SLURM cluster for the tests that submit job arrays: the fixture `slurm_cluster` and `wait_for_job`.

The fixture does not start a cluster (that installs packages and starts daemons as root): `bash .ci/slurm-up.sh`
does, and .ci/run calls it. Where sbatch is missing or no node is up, the tests that use the fixture skip, saying so.
conftest.py makes the fixture every test module's; a module that waits for jobs imports `wait_for_job`.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

START_HINT = "as root on Debian, bash .ci/slurm-up.sh starts a one-node cluster"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The name of a node that takes jobs; skips the test where sbatch cannot submit to one."""
    if shutil.which("sbatch") is None:
        pytest.skip(f"sbatch not found: no SLURM on this machine ({START_HINT})")
    try:  # sinfo retries for a minute where it finds no slurm.conf
        sinfo = subprocess.run(["sinfo", "-h", "-o", "%n %T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip(f"SLURM is not up: sinfo did not answer in 30 s ({START_HINT})")
    if sinfo.returncode != 0:
        pytest.skip(f"SLURM is not up: sinfo says {' '.join(sinfo.stderr.split())} ({START_HINT})")
    for line in sinfo.stdout.splitlines():
        node, state = line.split()
        if state in ("idle", "mixed", "allocated"):
            return node
    pytest.skip(f"no SLURM node takes jobs: sinfo lists {sinfo.stdout.split() or 'none'} ({START_HINT})")


def wait_for_job(job_id: str, timeout: float = 120) -> None:
    """Returns when no task of the job is pending or running any more; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # squeue lists pending and running tasks only; a job it has forgotten altogether is an error, also done
        squeue = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
        if squeue.returncode != 0 or not squeue.stdout.strip():
            return
        time.sleep(0.5)
    pytest.fail(f"SLURM job {job_id} still queued or running after {timeout} s:\n{squeue.stdout}", pytrace=False)
