#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by slurm-up.sh: only the daemons whose pids it
# recorded in $ZOOMMIL_SLURM_STATE, never anything found by name. Idempotent; exits 0 when
# nothing runs or when not root. ZOOMMIL_SLURM_PURGE=1 also removes the state directory and
# the /etc/slurm files that slurm-up.sh wrote (only if they carry its marker).
set -u

STATE="${ZOOMMIL_SLURM_STATE:-/var/tmp/zoommil-slurm}"
MARKER="# managed by zoommil tests/cluster/slurm-up.sh"

[ "$(id -u)" = 0 ] || { echo "slurm-down: not root; nothing to stop" >&2; exit 0; }

stop() {  # stop <name>: TERM the recorded pid, wait up to 15 s, then KILL
    local pidfile="$STATE/$1.pid" pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    # only the daemon we started: a stale pid file may name a reused pid
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        echo "slurm-down: stopped $1 (pid $pid)"
    fi
    rm -f "$pidfile"
}

# Running jobs first, so that no job step outlives its slurmd.
command -v scancel >/dev/null && [ -f "$STATE/slurmctld.pid" ] && scancel --full --quiet --user=root 2>/dev/null
stop slurmd
stop slurmctld
stop munged

if [ "${ZOOMMIL_SLURM_PURGE:-0}" = 1 ]; then
    for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
        [ -f "$f" ] && grep -qF "$MARKER" "$f" && rm -f "$f"
    done
    case "$STATE" in /var/tmp/zoommil-slurm*|/tmp/*) rm -rf "$STATE" ;; esac
fi
exit 0
