#!/usr/bin/env bash
# A single-node SLURM cluster on this Debian machine, for testing the SLURM profile end to end
# (tests/test_slurm.py, docs/cluster.md). Needs root and apt; no systemd (the daemons are started
# directly and stopped by the PIDs in their pid files).
#   envs/slurm/start-local-slurm.sh start   # install if needed, write the config, start munged/slurmctld/slurmd
#   envs/slurm/start-local-slurm.sh stop    # stop the three daemons this script started
# Two partitions: cpu (default) and gpu. The gpu partition's GRES is `Name=gpu File=/dev/null`: no
# real device, enough for a GPU rule's `--gpus=1` to be scheduled (the job sees CUDA_VISIBLE_DEVICES=0).
# Without slurmdbd there is no accounting: run Snakemake with `--slurm-status-command squeue`; jobs are
# logged by the job-completion plugin in /var/log/slurm/jobcomp.log.
set -euo pipefail

CONF_DIR=/etc/slurm  # the plugin's job step drops SLURM_CONF: the config must be at the default path
LOG_DIR=/var/log/slurm

die() { echo "start-local-slurm: $*" >&2; exit 2; }

stop() {
    local pidfile pid
    for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then kill "$pid"; fi
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$pidfile"
    done
}

install() {
    [[ $(id -u) == 0 ]] || die "needs root (apt-get, /etc/slurm, daemons)"
    command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu)"
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sinfo >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            slurmctld slurmd slurm-client munge >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y \
                --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; } \
            || die "apt-get install slurmctld slurmd slurm-client munge failed"
    fi
}

write_config() {
    local host node cpus mem
    host=$(hostname -s)
    # This node as slurmd sees it (CPUs, sockets, cores, memory): a node declared larger than it is gets drained.
    node=$(slurmd -C | head -1)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    cat >"$CONF_DIR/slurm.conf" <<CONF
# Written by envs/slurm/start-local-slurm.sh: single-node test cluster.
ClusterName=mmcal-local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
GresTypes=gpu
# A job without a memory request would otherwise take the whole node.
DefMemPerCPU=$((mem / cpus / 2))
$node Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
CONF
    echo "NodeName=$host Name=gpu File=/dev/null" >"$CONF_DIR/gres.conf"
}

start() {
    install
    stop
    write_config
    mkdir -p /run/munge /var/log/munge
    [[ -f /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    runuser -u munge -- munged
    slurmctld
    slurmd
    # The node is usable once sinfo reports it idle (~1 s here).
    for _ in $(seq 100); do
        if sinfo -h -N -o %t 2>/dev/null | grep -qx idle; then
            sinfo
            return 0
        fi
        sleep 0.2
    done
    sinfo -N -l >&2 || true
    tail -20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    die "the node did not become idle within 20 s"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 [start|stop]" ;;
esac
