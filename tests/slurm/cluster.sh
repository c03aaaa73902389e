#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests marked `slurm` and for trying
# `hydra/launcher=slurm` by hand:
#
#   tests/slurm/cluster.sh start    # install slurm-wlm if missing, start slurmctld + slurmd
#   tests/slurm/cluster.sh status   # are the daemons up; sinfo and squeue
#   tests/slurm/cluster.sh stop     # cancel every job, stop both daemons
#
# Everything (slurm.conf, state, spool, logs, pid files) lives in $TRPO_SLURM_DIR
# (default: ${TMPDIR:-/tmp}/trpo-lab-slurm). `start` is idempotent: a cluster already up is left
# as it is. Needs root (SlurmUser and the user jobs run as) and Debian's slurm-wlm (22.05).
#
# The settings that differ from a real cluster, and why:
# - AuthType=auth/none, CredType=cred/none: one machine, no munge key to manage.
# - ProctrackType=proctrack/linuxproc, TaskPlugin=task/none: no cgroups needed.
# - AuthInfo=cred_expire=$TRPO_SLURM_REQUEUE_DELAY_S (default 10): SLURM holds a requeued job in
#   PENDING (BeginTime) for the credential lifetime plus 1 s, 120 s by default (slurm.conf(5),
#   AuthInfo). A short one lets the preemption and time-out tests finish in minutes; the path is
#   the same as on a cluster with the default.
# - SchedulerParameters=sched_interval=2,bf_interval=2: pending jobs are looked at every 2 s (the
#   defaults, 60 s and 30 s, would leave a requeued job pending well past its BeginTime).
# - KillWait=10 s between SIGTERM and SIGKILL (default 30), MinJobAge=3600 so that finished jobs
#   stay visible to `scontrol show job` during a test session.
set -euo pipefail

DIR=${TRPO_SLURM_DIR:-${TMPDIR:-/tmp}/trpo-lab-slurm}
PARTITION=${TRPO_SLURM_PARTITION:-debug}
MAX_TIME_MIN=${TRPO_SLURM_MAX_TIME_MIN:-30}    # the partition's MaxTime, in minutes
REQUEUE_DELAY_S=${TRPO_SLURM_REQUEUE_DELAY_S:-10}
CTLD_PORT=${TRPO_SLURM_PORT:-6817}             # slurmd listens on the next port
NODE=$(hostname -s)
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

say() { echo "cluster.sh: $*"; }
die() { echo "cluster.sh: error: $*" >&2; exit 1; }

# The pid in a pid file, if that process is alive.
live_pid() {
    local file=$DIR/$1.pid pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

node_state() { timeout 10 sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n1; }

usage_hint() {
    local partition time_limit
    read -r partition time_limit < <(timeout 10 sinfo -h -o '%P %l' | sed -n 's/^\(.*\)\* /\1 /p') || true
    cat <<EOF
cluster.sh: SLURM is up: node $NODE ($(node_state)), default partition $partition (MaxTime $time_limit).
Use it from a shell with:
    export SLURM_CONF=$CONF
    python run.py -m hydra/launcher=slurm hydra.launcher.partition=$partition \\
        hydra.launcher.timeout_min=10 ...
    python -m pytest -m slurm -n 0    # the cluster tests (they start the cluster if it is down)
Logs: $DIR/slurmctld.log, $DIR/slurmd.log. Stop it with: $0 stop
EOF
}

install_if_missing() {
    local missing
    missing=$(for tool in slurmctld slurmd sbatch srun scontrol sinfo squeue; do
                  command -v "$tool" >/dev/null || echo -n "$tool "; done)
    [[ -z $missing ]] && return
    [[ $(id -u) == 0 ]] || die "slurm-wlm is not installed (no $missing) and installing it needs root"
    command -v apt-get >/dev/null || die "slurm-wlm is not installed (no $missing) and there is no apt-get"
    say "installing slurm-wlm (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$DIR/apt.log" 2>&1 && apt-get install -y -q slurm-wlm >>"$DIR/apt.log" 2>&1 \
        || die "apt-get install slurm-wlm failed; see $DIR/apt.log"
}

write_conf() {
    local memory_mb
    # RealMemory as slurmd measures it, so that mem_gb requests are checked against it.
    memory_mb=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mkdir -p "$DIR/state" "$DIR/spool"
    cat >"$CONF" <<EOF
# Written by tests/slurm/cluster.sh: a single-node cluster for the trpo-lab tests.
ClusterName=trpolab
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
SlurmUser=$(id -un)
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=$REQUEUE_DELAY_S
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=10
MinJobAge=3600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=2 RealMemory=$memory_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=$MAX_TIME_MIN State=UP
EOF
}

wait_idle() {
    local state=""
    for _ in $(seq 60); do
        state=$(node_state || true)
        case $state in
            idle|mix|alloc) return 0 ;;
            down*|drain*)   # a node left down by an earlier run of this cluster
                scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 1
    done
    die "node $NODE is not idle after 60 s (sinfo says '${state:-nothing}'); see $DIR/slurmctld.log and $DIR/slurmd.log"
}

start() {
    if live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null; then
        wait_idle
        usage_hint
        return
    fi
    stop quiet  # one daemon without the other: start both afresh
    mkdir -p "$DIR"
    install_if_missing
    write_conf
    # -c: start without the job state of an earlier cluster in $DIR
    slurmctld -c || die "slurmctld did not start; see $DIR/slurmctld.log"
    slurmd || die "slurmd did not start; see $DIR/slurmd.log"
    wait_idle
    usage_hint
}

# Wait up to $2 seconds for process $1 to end.
wait_gone() {
    for _ in $(seq "$(($2 * 10))"); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

stop() {
    local pid name
    if live_pid slurmctld >/dev/null; then
        # Cancel every job and wait until SLURM has ended their processes: stopping slurmd
        # alone would leave running jobs behind.
        timeout 20 scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 60); do
            [[ -z $(timeout 10 squeue -h -o %i 2>/dev/null) ]] && break
            sleep 1
        done
    fi
    for name in slurmd slurmctld; do
        if pid=$(live_pid "$name"); then
            kill "$pid"
            if ! wait_gone "$pid" 20; then
                [[ ${1:-} == quiet ]] || say "$name ($pid) did not stop on SIGTERM; killing it"
                kill -9 "$pid" 2>/dev/null || true
                wait_gone "$pid" 5 || die "$name ($pid) is still running"
            fi
        fi
        rm -f "$DIR/$name.pid"
    done
    [[ ${1:-} == quiet ]] || say "stopped (nothing of it runs; files stay in $DIR)"
}

status() {
    local up=0 name pid
    for name in slurmctld slurmd; do
        if pid=$(live_pid "$name"); then
            say "$name is running (pid $pid)"
        else
            say "$name is not running"; up=1
        fi
    done
    if ((up == 0)); then
        timeout 10 sinfo || true
        timeout 10 squeue -o "%.12i %.9P %.20j %.8T %.10M %.10l %R" || true
        echo "export SLURM_CONF=$CONF"
    fi
    return $up
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
