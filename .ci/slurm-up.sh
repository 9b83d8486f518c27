#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (slurmctld + slurmd on localhost), for the tests that submit job arrays.
# Debian 12, as root; installs slurm-wlm and munge with apt-get where missing. Idempotent: a cluster already up is
# left alone. Where it cannot start, it exits non-zero and the sbatch tests skip (.ci/run does not fail on it).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by nnunet-dca .ci/slurm-up.sh"
HOST=$(hostname -s)
LOGS=(/var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log)
trap 'echo "slurm-up.sh: failed at line $LINENO: $BASH_COMMAND" >&2; tail -n 5 "${LOGS[@]}" >&2 2>/dev/null' ERR

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1; }

# (no slurm.conf: sinfo would retry for a minute before it fails)
if [[ -f $CONF ]] && command -v sinfo >/dev/null && [[ $(node_state) =~ ^(idle|mixed|allocated|completing) ]]; then
    echo "SLURM already up: node $HOST $(node_state)"
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "slurm-up.sh: needs root (apt-get, daemons)" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# Never overwrite a slurm.conf someone else wrote: that would be a real cluster's.
if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm-up.sh: $CONF exists and was not written by this script; leaving it alone" >&2
    exit 1
fi

# munge: Debian's package creates a key; make one where it did not.
if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
fi

mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
# The node line is slurmd's own view of this machine (CPUs, sockets, cores, memory): a line that claims more than
# slurmd finds would drain the node. No cgroup plugins (containers seldom allow cgroups): processes are tracked
# through /proc, tasks are not bound, no accounting. No cgroup.conf either: 22.05 has no CgroupPlugin=disabled
# (slurmd fails on it); without the file slurmd autodetects the cgroup version, which does no harm here.
cat >"$CONF" <<EOF
$MARK
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
$(slurmd -C | head -n 1) State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

# by the clock: sinfo itself waits seconds for a controller that does not answer
while ((SECONDS < 60)); do
    if [[ $(node_state) =~ ^(idle|mixed|allocated) ]]; then
        echo "SLURM up: node $HOST $(node_state) (${SECONDS} s)"
        exit 0
    fi
    sleep 1
done
echo "slurm-up.sh: node $HOST not idle after ${SECONDS} s (state: $(node_state))" >&2
sinfo -R >&2 || true
tail -n 5 "${LOGS[@]}" >&2 || true
exit 1
