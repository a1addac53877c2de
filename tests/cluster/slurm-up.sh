#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster (munged + slurmctld + slurmd) on this machine.
#
# Why: tests/cluster/test_slurm.py runs the tiny workflow through `--profile profiles/slurm`
# against a real scheduler. CI calls this script before pytest and slurm-down.sh after.
#
# Safe and idempotent:
#   - not root, no slurm-wlm/munge installed, or a foreign /etc/slurm/slurm.conf: it prints
#     why and exits 0 (the cluster test then skips with that reason);
#   - a cluster it started earlier and that still answers `sinfo`: it does nothing.
#   - slurm-wlm + munge, or one of their commands, missing: it installs them with apt-get
#     when it can (Debian/Ubuntu); ZOOMMIL_SLURM_INSTALL=0 forbids that (the pytest fixture
#     sets it).
# Daemons are started directly (containers have no systemd); their pids are recorded in
# $ZOOMMIL_SLURM_STATE (default /var/tmp/zoommil-slurm) so slurm-down.sh stops only them.
set -u

STATE="${ZOOMMIL_SLURM_STATE:-/var/tmp/zoommil-slurm}"
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARKER="# managed by zoommil tests/cluster/slurm-up.sh"
WAIT_S="${ZOOMMIL_SLURM_WAIT_S:-60}"

skip() { echo "slurm-up: $*; not starting a SLURM cluster" >&2; exit 0; }
# alive NAME: the daemon whose pid we recorded still runs (and the pid was not reused)
alive() {
    local pid
    pid=$(cat "$STATE/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

[ "$(id -u)" = 0 ] || skip "needs root (daemons run as root, config goes to /etc/slurm)"

# Daemons, and the client commands the slurm executor plugin and the tests call.
NEEDED="slurmctld slurmd munged sbatch squeue scontrol scancel sinfo"
missing() {
    local c out=""
    for c in $NEEDED; do command -v "$c" >/dev/null || out="$out $c"; done
    echo "${out# }"
}
if [ -n "$(missing)" ]; then
    if [ "${ZOOMMIL_SLURM_INSTALL:-1}" = 1 ] && command -v apt-get >/dev/null; then
        start=$(date +%s)
        # --reinstall also restores a command removed from an installed package.
        (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall \
            slurm-wlm slurm-client munge) >"/tmp/zoommil-slurm-apt.log" 2>&1 \
            || skip "apt-get install slurm-wlm slurm-client munge failed (see /tmp/zoommil-slurm-apt.log)"
        echo "slurm-up: installed slurm-wlm + munge in $(( $(date +%s) - start )) s"
    fi
    [ -z "$(missing)" ] || skip "missing $(missing) (apt-get install slurm-wlm slurm-client munge)"
fi

if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    skip "$CONF exists and was not written by this script (a real site config is never touched)"
fi

if alive slurmctld && alive slurmd && sinfo -h >/dev/null 2>&1; then
    echo "slurm-up: cluster already running (state in $STATE)"
    exit 0
fi

mkdir -p "$STATE"/{ctld,spool,munge} /run/munge /var/log/munge /var/lib/munge /etc/slurm

# munge: the package ships a key; make one if it is missing.
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --force --keyfile /etc/munge/munge.key
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
fi
chmod 600 /etc/munge/munge.key
if ! alive munged; then
    munged --force --socket=/run/munge/munge.socket.2 --pid-file="$STATE/munged.pid" \
        --log-file="$STATE/munged.log" --seed-file="$STATE/munge/munged.seed" \
        || skip "munged failed to start (see $STATE/munged.log)"
fi

# Describe this node exactly as slurmd sees it (CPUs, sockets, memory), less a margin of memory.
host=$(hostname -s)
node=$(slurmd -C | head -1) || skip "slurmd -C failed"
mem=$(echo "$node" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
mem=$(( mem * 95 / 100 ))
node=$(echo "$node" | sed -e "s/RealMemory=[0-9]*/RealMemory=$mem/" -e "s/^NodeName=[^ ]*/NodeName=$host/")

cat >"$CONF" <<CONF_EOF
$MARKER
# Single-node test cluster. No accounting database: job states come from slurmctld, which
# keeps finished jobs for MinJobAge seconds, long enough for Snakemake's squeue polling.
ClusterName=zoommil
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=900
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
# One fake GPU (gres without a device file) so GPU rules really request and get gres/gpu.
GresTypes=gpu
$node Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF_EOF
cat >"$GRES_CONF" <<GRES_EOF
$MARKER
NodeName=$host Name=gpu Count=1 File=/dev/null
GRES_EOF

if ! alive slurmctld; then
    slurmctld -c || skip "slurmctld failed to start (see $STATE/slurmctld.log)"
fi
if ! alive slurmd; then
    slurmd || skip "slurmd failed to start (see $STATE/slurmd.log)"
fi

for _ in $(seq "$WAIT_S"); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -1)
    case "$state" in idle*|mixed*|allocated*) echo "slurm-up: node $host is $state (state in $STATE)"; exit 0 ;; esac
    sleep 1
done
skip "node $host did not become idle within ${WAIT_S}s (last state: ${state:-none}; see $STATE/*.log)"
