#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine, for testing qsmprep's Nipype SLURM path.
#
#   bash tests/deploy/slurm_setup.sh start [STATE_DIR]   # install (apt), start munged+slurmctld+slurmd
#   bash tests/deploy/slurm_setup.sh stop  [STATE_DIR]   # stop the daemons started by `start`
#   bash tests/deploy/slurm_setup.sh status [STATE_DIR]
#
# Everything lives in STATE_DIR (default /tmp/qsmprep-slurm): munge key and socket, slurm.conf,
# state, spool, logs and pid files.  Nothing under /etc is changed: clients find the cluster
# through `SLURM_CONF=STATE_DIR/slurm.conf`, printed by `start` as its last line
# (`eval "$(bash tests/deploy/slurm_setup.sh start | tail -n 1)"`).  The system munged (if
# any) is left alone: this munged listens on STATE_DIR/munge.socket, named in slurm.conf.
#
# Daemons run as root (SlurmUser=SlurmdUser=root), the node is the machine's short hostname
# with NodeAddr=127.0.0.1, the controller is reached at 127.0.0.1, and there are no cgroups
# (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none): this works in containers.
#
# Environment: QSMPREP_SLURM_CTLD_PORT / QSMPREP_SLURM_D_PORT (default 16817/16818),
# QSMPREP_SLURM_CPUS (default min(nproc, 2)), QSMPREP_SLURM_CRED_EXPIRE (default 10 s; also the
# delay before a requeued job may start again, 120 s in SLURM's default),
# QSMPREP_SLURM_NO_INSTALL=1 (never call apt-get).
#
# Exit codes of `start`: 0 running; 3 not root; 4 the packages are missing and could not be
# installed (no apt-get, or apt-get failed); 5 a daemon did not start or the node never became
# idle (the log tails are printed).  Every wait is bounded.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # the daemons live in /usr/sbin

ACTION=${1:-}
STATE=${2:-/tmp/qsmprep-slurm}
CTLD_PORT=${QSMPREP_SLURM_CTLD_PORT:-16817}
D_PORT=${QSMPREP_SLURM_D_PORT:-16818}

log() { echo "slurm_setup: $*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        log "must run as root (daemons run as root; apt-get installs the packages)"
        exit 3
    fi
}

have_binaries() {
    local b
    for b in munged slurmctld slurmd sbatch squeue sinfo scontrol; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || return 1
    done
}

install_packages() {
    have_binaries && return 0
    if [ "${QSMPREP_SLURM_NO_INSTALL:-0}" = 1 ]; then
        log "slurm-wlm/munge not installed and QSMPREP_SLURM_NO_INSTALL=1"
        exit 4
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "slurm-wlm/munge not installed and apt-get not available (not Debian/Ubuntu)"
        exit 4
    fi
    # one installer at a time (parallel test workers may each start a cluster); the lock's
    # file descriptor is closed before any daemon starts, so no daemon inherits the lock
    exec 9>/tmp/qsmprep-slurm-install.lock
    if command -v flock >/dev/null 2>&1 && ! flock -w 1200 9; then
        exec 9>&-
        log "timed out waiting for /tmp/qsmprep-slurm-install.lock"
        exit 4
    fi
    if ! have_binaries; then
        log "installing slurm-wlm and munge with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        if ! timeout 300 apt-get update -q >"$STATE/apt.log" 2>&1 \
            || ! timeout 900 apt-get install -y -q --no-install-recommends \
                -o DPkg::Lock::Timeout=300 slurm-wlm munge >>"$STATE/apt.log" 2>&1; then
            exec 9>&-
            tail -n 20 "$STATE/apt.log" >&2 || true
            log "apt-get could not install slurm-wlm and munge (log: $STATE/apt.log)"
            exit 4
        fi
    fi
    exec 9>&-
    have_binaries || { log "packages installed but binaries missing"; exit 4; }
}

# Stop the daemon whose pid file is $1 (only that pid; TERM, then KILL after a bounded wait).
stop_pidfile() {
    local pidfile=$1 pid i
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

write_conf() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=${QSMPREP_SLURM_CPUS:-$(nproc)}
    [ "$cpus" -gt 2 ] && [ -z "${QSMPREP_SLURM_CPUS:-}" ] && cpus=2
    # RealMemory must not exceed what slurmd detects, or the node is drained as invalid.
    mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    cat >"$STATE/slurm.conf" <<EOF
# Written by qsmprep tests/deploy/slurm_setup.sh: one node on loopback, no cgroups.
ClusterName=qsmprep-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge.socket,cred_expire=${QSMPREP_SLURM_CRED_EXPIRE:-10}
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
MailProg=/bin/true
# bind slurmctld and slurmd to their configured addresses (127.0.0.1), not to 0.0.0.0
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# test pending jobs every 2 s (default 60 s): requeued jobs start again quickly
SchedulerParameters=sched_interval=2
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=60
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

fail_start() {
    log "$1"
    for f in munged.log slurmctld.log slurmd.log; do
        [ -f "$STATE/$f" ] && { echo "--- $STATE/$f" >&2; tail -n 25 "$STATE/$f" >&2; }
    done
    do_stop || true
    exit 5
}

do_start() {
    need_root
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    install_packages
    do_stop  # a previous run that was interrupted
    rm -rf "$STATE/ctld" "$STATE/spool"  # a fresh cluster: no jobs or node state left over
    mkdir -p "$STATE/ctld" "$STATE/spool"
    export SLURM_CONF=$STATE/slurm.conf
    write_conf

    # munge: a fresh key, a private socket; --force because it runs as root.
    rm -f "$STATE/munge.key"
    dd if=/dev/urandom of="$STATE/munge.key" bs=1024 count=1 status=none
    chmod 400 "$STATE/munge.key"
    timeout 30 munged --force --socket="$STATE/munge.socket" --key-file="$STATE/munge.key" \
        --log-file="$STATE/munged.log" --pid-file="$STATE/munged.pid" \
        --seed-file="$STATE/munged.seed" || fail_start "munged did not start"
    local i ok=0
    for i in $(seq 1 50); do
        if echo ping | timeout 5 munge --socket="$STATE/munge.socket" 2>/dev/null \
            | timeout 5 unmunge --socket="$STATE/munge.socket" >/dev/null 2>&1; then
            ok=1; break
        fi
        sleep 0.2
    done
    [ "$ok" = 1 ] || fail_start "munge credentials do not round-trip"

    timeout 30 slurmctld -f "$SLURM_CONF" || fail_start "slurmctld did not start"
    ok=0
    for i in $(seq 1 60); do
        timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' && { ok=1; break; }
        sleep 0.5
    done
    [ "$ok" = 1 ] || fail_start "slurmctld does not answer scontrol ping"

    timeout 30 slurmd -f "$SLURM_CONF" || fail_start "slurmd did not start"
    local host state=''
    host=$(hostname -s)
    for i in $(seq 1 120); do
        state=$(timeout 5 sinfo -h -N -n "$host" -o '%T' 2>/dev/null | head -n 1 || true)
        [ "$state" = idle ] && break
        case "$state" in  # a node left down/drained by an earlier run
            down*|drain*) timeout 5 scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    [ "$state" = idle ] || fail_start "node $host not idle after 60 s (state: ${state:-none})"
    log "single-node SLURM running (node $host, state dir $STATE)"
    echo "export SLURM_CONF=$SLURM_CONF"
}

do_stop() {
    if [ -f "$STATE/slurm.conf" ] && command -v scontrol >/dev/null 2>&1 \
        && [ -f "$STATE/slurmctld.pid" ]; then
        SLURM_CONF=$STATE/slurm.conf timeout 10 scontrol shutdown >/dev/null 2>&1 || true
    fi
    stop_pidfile "$STATE/slurmd.pid"
    stop_pidfile "$STATE/slurmctld.pid"
    stop_pidfile "$STATE/munged.pid"
    rm -f "$STATE/munge.socket" "$STATE/munge.socket.lock"
}

do_status() {
    export SLURM_CONF=$STATE/slurm.conf
    timeout 5 sinfo -N -l
    timeout 5 squeue
}

case "$ACTION" in
    start) do_start ;;
    stop) do_stop; log "stopped (state dir $STATE)" ;;
    status) do_status ;;
    *) echo "usage: $0 {start|stop|status} [STATE_DIR]" >&2; exit 64 ;;
esac
