#!/usr/bin/env bash
# A single-node Slurm cluster on localhost with one declared GPU (gres), for testing the slurm profile.
#
#   tests/slurm/cluster.sh start [STATE_DIR]   install slurmctld/slurmd/slurm-client/munge from Debian if
#                                              missing (needs root), write the config, start the daemons
#                                              detached, wait until the node is idle
#   tests/slurm/cluster.sh stop  [STATE_DIR]   stop exactly the daemons that `start` recorded, by PID
#
# Exit status 3 means Slurm cannot run on this machine (not root, no apt-get, install failed, a foreign
# Slurm config): the tests skip with that reason. Any other failure is an error.
#
# STATE_DIR (default $SLURM_STATE or /tmp/scaleaudit-slurm) holds spool, logs and PID files. The config
# goes to /etc/slurm/{slurm,gres}.conf, where every client looks: the Snakemake jobstep drops SLURM_*
# variables (SLURM_CONF too) before its srun. A config that this script did not write is never
# overwritten, and `stop` removes only its own.
# Without an accounting database pass `--slurm-status-command squeue` to Snakemake; MinJobAge is a day,
# so squeue and scontrol still know every finished job when Snakemake (or a test) asks, however long the
# study took on a loaded machine.
set -euo pipefail

cmd=${1:-}
S=$(realpath -m "${2:-${SLURM_STATE:-/tmp/scaleaudit-slurm}}")
DAEMONS=(munged slurmctld slurmd)   # started in this order, stopped in reverse
ETC=/etc/slurm
MARK="# written by scaleaudit tests/slurm/cluster.sh"

die() { echo "cluster.sh: $*" >&2; exit 1; }
cannot() { echo "cluster.sh: cannot run Slurm here: $*" >&2; exit 3; }  # exit 3: tests skip, not fail

install_packages() {
    local missing=()
    for tool in slurmctld slurmd sbatch munged; do
        command -v "$tool" >/dev/null || PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" -eq 0 ] || cannot "not root, so Slurm cannot be installed (missing: ${missing[*]})"
    command -v apt-get >/dev/null || cannot "no apt-get to install Slurm (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$S/log/apt.log" 2>&1 || cannot "apt-get update failed (see $S/log/apt.log)"
    # Debian's policy-rc.d / no systemd: nothing auto-starts; this script starts what it needs.
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >>"$S/log/apt.log" 2>&1 ||
        cannot "apt-get install failed (see $S/log/apt.log)"
}

alive() {  # alive NAME: the recorded PID still runs that daemon (a recycled PID is not ours)
    local pidfile="$S/$1.started.pid"
    [ -s "$pidfile" ] || return 1
    local pid; pid=$(cat "$pidfile")
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$1"
}

ours() {  # ours FILE: absent, or written by this script
    [ ! -e "$1" ] || head -1 "$1" | grep -qF "$MARK"
}

write_config() {
    local host mem topo
    for f in "$ETC/slurm.conf" "$ETC/gres.conf"; do
        ours "$f" || cannot "$f exists and was not written by this script; refusing to overwrite it"
    done
    mkdir -p "$ETC"
    host=$(hostname -s)
    mem=$(($(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 85 / 100))
    topo=$(slurmd -C | head -1 | grep -o 'CPUs=.*ThreadsPerCore=[0-9]*')
    cat >"$ETC/slurm.conf" <<EOF
$MARK (state: $S)
ClusterName=scaleaudit-test
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmctldPort=${SLURM_CTLD_PORT:-6817}
SlurmdPort=${SLURM_D_PORT:-6818}
AuthType=auth/munge
StateSaveLocation=$S/spool/ctld
SlurmdSpoolDir=$S/spool/d
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$S/log/jobcomp.txt
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=86400
KillWait=5
Waittime=0
GresTypes=gpu
NodeName=${host} NodeAddr=127.0.0.1 ${topo} RealMemory=${mem} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    # The GPU is declared, not real: jobs get the gres booking, training falls back to the CPU.
    cat >"$ETC/gres.conf" <<EOF
$MARK
AutoDetect=off
NodeName=${host} Name=gpu File=/dev/null Count=1
EOF
}

start_daemon() {  # start_daemon NAME COMMAND...: detached, foreground mode, PID recorded
    local name=$1; shift
    setsid "$@" </dev/null >"$S/log/$name.out" 2>&1 &
    echo $! >"$S/$name.started.pid"
}

start() {
    [ "$(id -u)" -eq 0 ] || cannot "not root (the daemons run as root and the config goes to $ETC)"
    for d in "${DAEMONS[@]}"; do
        ! alive "$d" || die "$d from $S is already running (PID $(cat "$S/$d.started.pid")); run: $0 stop $S"
    done
    # Fresh state each start, but never wipe a folder this script did not make.
    if [ -d "$S" ] && [ -n "$(ls -A "$S")" ]; then
        [ -d "$S/spool" ] || die "$S exists and is not a cluster.sh state folder; pick another STATE_DIR"
        rm -rf "$S"
    fi
    mkdir -p "$S/spool/ctld" "$S/spool/d" "$S/log"
    install_packages
    export PATH=$PATH:/usr/sbin
    write_config
    if munge -n >/dev/null 2>&1; then
        echo "cluster.sh: using the munged already running" >&2
    else
        [ -s /etc/munge/munge.key ] || {
            mungekey --create --keyfile=/etc/munge/munge.key
            chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
        }
        mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
        start_daemon munged setpriv --reuid=munge --regid=munge --init-groups munged -F
        for _ in $(seq 100); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
        munge -n >/dev/null 2>&1 || die "munged did not start (see $S/log/munged.out)"
    fi
    start_daemon slurmctld slurmctld -D
    start_daemon slurmd slurmd -D -N "$(hostname -s)"
    for _ in $(seq 600); do
        [ "$(sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null)" = idle ] && break
        sleep 0.1
    done
    [ "$(sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null)" = idle ] ||
        die "the node did not become idle (see $S/log/slurmctld.log and $S/log/slurmd.log)"
    sinfo -N -o '%N %T %c %m %G'
    echo "cluster.sh: cluster up (state in $S)"
}

stop() {
    local pids=() d pid
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        d=${DAEMONS[i]}
        if alive "$d"; then
            pid=$(cat "$S/$d.started.pid"); kill "$pid"; pids+=("$pid")
        fi
        rm -f "$S/$d.started.pid"
    done
    for pid in "${pids[@]}"; do  # KillWait-style grace, then SIGKILL
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        ! kill -0 "$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    done
    for f in "$ETC/slurm.conf" "$ETC/gres.conf"; do
        ! ours "$f" || rm -f "$f"
    done
    echo "cluster.sh: stopped ${#pids[@]} daemon(s) of $S"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 start|stop [STATE_DIR]" ;;
esac
