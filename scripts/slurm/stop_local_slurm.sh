#!/usr/bin/env bash
# Stop the daemons that start_local_slurm.sh started (and only those: the pids it recorded in
# $STATE_DIR/started), cancel the jobs left in that cluster, and remove the /etc/slurm/slurm.conf
# it wrote. Idempotent: with nothing recorded it does nothing. Log files stay in $STATE_DIR.
set -euo pipefail

STATE_DIR="${SSL_PHOTOZ_SLURM_DIR:-/var/tmp/ssl-photoz-slurm}"
CONF=/etc/slurm/slurm.conf
MARKER="written by ssl-photoz scripts/slurm/start_local_slurm.sh"
export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "stop_local_slurm: $*"; }

if [ ! -s "$STATE_DIR/started" ]; then
    say "no daemons recorded in $STATE_DIR/started: nothing to stop"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || {
    echo "stop_local_slurm: error: must be run as root (the daemons run as root)" >&2
    exit 1
}

# Jobs still queued or running in our cluster (a test that failed half-way).
if grep -q "^slurmctld " "$STATE_DIR/started"; then
    timeout 20 scancel --full --user "$(id -un)" >/dev/null 2>&1 || true
fi

# Stop in reverse order of starting: slurmd, slurmctld, then munged.
stop() { # name pid
    local name="$1" pid="$2" i
    if ! kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) is not running"
        return 0
    fi
    # Guard against a recycled pid: the process must still be the daemon we started.
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
        "$name"*) ;; # e.g. slurmd, or slurmd-wlm where /usr/sbin/slurmd is a link to it
        *)
            say "pid $pid is no longer $name: leaving it alone"
            return 0
            ;;
    esac
    kill -TERM "$pid"
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || {
            say "$name (pid $pid) stopped"
            return 0
        }
        sleep 0.2
    done
    say "$name (pid $pid) ignored SIGTERM for 30 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}
tac "$STATE_DIR/started" | while read -r name pid; do
    stop "$name" "$pid"
done
rm -f "$STATE_DIR/started"

if [ -e "$CONF" ] && grep -q "$MARKER" "$CONF"; then
    rm -f "$CONF"
    say "removed $CONF"
fi
rm -rf "$STATE_DIR/ctld" "$STATE_DIR/spool"
