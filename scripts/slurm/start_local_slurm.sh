#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (Debian's slurm-wlm and munge) for
# tests/test_slurm.py: installs the packages if they are missing, writes /etc/slurm/slurm.conf
# from slurm.conf.in, starts munged (unless a munge daemon already answers), slurmctld and slurmd,
# and waits until the node is idle. Every daemon it starts is recorded in $STATE_DIR/started;
# stop_local_slurm.sh stops exactly those.
#
# Idempotent: if SLURM already answers (ours or the machine's own), it does nothing.
# Needs root (package install, /etc/slurm, daemons running as root) and, to install, apt-get.
#
# Environment: SSL_PHOTOZ_SLURM_DIR (state, spool, pid and log files; default
# /var/tmp/ssl-photoz-slurm), SSL_PHOTOZ_SLURM_PARTITION (partition name; default local).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${SSL_PHOTOZ_SLURM_DIR:-/var/tmp/ssl-photoz-slurm}"
PARTITION="${SSL_PHOTOZ_SLURM_PARTITION:-local}"
CONF=/etc/slurm/slurm.conf
MARKER="written by ssl-photoz scripts/slurm/start_local_slurm.sh"

say() { echo "start_local_slurm: $*"; }
die() {
    echo "start_local_slurm: error: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "must be run as root (it installs packages, writes $CONF and starts \
daemons as root); try: sudo $0"

if command -v sinfo >/dev/null 2>&1 && timeout 10 sinfo -h >/dev/null 2>&1; then
    say "SLURM already answers (sinfo): nothing to start"
    sinfo
    exit 0
fi

# 1. Packages.
missing=()
for pkg in slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found: install ${missing[*]} (Debian/Ubuntu packages) yourself"
    say "installing ${missing[*]} with apt-get"
    start=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed (no network or no package mirror?)"
    apt-get install -y -qq "${missing[@]}" >"${TMPDIR:-/tmp}/ssl-photoz-slurm-apt.log" 2>&1 \
        || die "apt-get install ${missing[*]} failed; see ${TMPDIR:-/tmp}/ssl-photoz-slurm-apt.log"
    say "installed in $(($(date +%s) - start)) s"
fi
for exe in munged slurmctld slurmd sinfo sbatch squeue scontrol; do
    command -v "$exe" >/dev/null 2>&1 || [ -x "/usr/sbin/$exe" ] || die "$exe not found after install"
done
export PATH="$PATH:/usr/sbin:/sbin"

# 2. Configuration (never overwrites a slurm.conf this script did not write).
if [ -e "$CONF" ] && ! grep -q "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching it (is a SLURM \
configured here but not running? start it, or move $CONF away)"
fi
mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/spool" /etc/slurm
host="$(hostname -s)"
node_line="$(slurmd -C | head -n 1)"
case "$node_line" in
    NodeName=*) ;;
    *) die "slurmd -C printed no NodeName line: $node_line" ;;
esac
sed -e "s|@MARKER@|$MARKER|" -e "s|@HOST@|$host|" -e "s|@STATE_DIR@|$STATE_DIR|g" \
    -e "s|@NODE_LINE@|$node_line|" -e "s|@PARTITION@|$PARTITION|" \
    "$HERE/slurm.conf.in" >"$CONF.tmp"
mv "$CONF.tmp" "$CONF"
say "wrote $CONF ($node_line, partition $PARTITION)"

record() { echo "$1 $2" >>"$STATE_DIR/started"; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
wait_pidfile() { # file seconds -> prints the pid once the file names a live process
    local i pid
    for ((i = 0; i < $2 * 5; i++)); do
        pid="$(cat "$1" 2>/dev/null || true)"
        if alive "$pid"; then
            echo "$pid"
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# 3. munge: authentication between the SLURM daemons and clients.
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "a munge daemon already answers: using it"
else
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    pid="$(wait_pidfile /run/munge/munged.pid 20)" || die "munged did not start (see /var/log/munge)"
    record munged "$pid"
    say "munged started (pid $pid)"
fi

# 4. slurmctld (controller) and slurmd (the node), clearing any state of an earlier run.
rm -f "$STATE_DIR/slurmctld.pid" "$STATE_DIR/slurmd.pid"
slurmctld -c || die "slurmctld failed to start; see $STATE_DIR/slurmctld.log"
pid="$(wait_pidfile "$STATE_DIR/slurmctld.pid" 30)" \
    || die "slurmctld did not start; see $STATE_DIR/slurmctld.log: $(tail -n 5 "$STATE_DIR/slurmctld.log" 2>/dev/null)"
record slurmctld "$pid"
say "slurmctld started (pid $pid)"
slurmd -c || die "slurmd failed to start; see $STATE_DIR/slurmd.log"
pid="$(wait_pidfile "$STATE_DIR/slurmd.pid" 30)" \
    || die "slurmd did not start; see $STATE_DIR/slurmd.log: $(tail -n 5 "$STATE_DIR/slurmd.log" 2>/dev/null)"
record slurmd "$pid"
say "slurmd started (pid $pid)"

# 5. Wait for the node to be schedulable.
for ((i = 0; i < 60; i++)); do
    state="$(timeout 10 sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)"
    case "$state" in
        idle | mixed | allocated) break ;;
        *drain* | *inval* | *down* | *fail*)
            # A node registered down after a restart: return it to service once.
            scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
            ;;
    esac
    sleep 1
done
case "$state" in
    idle | mixed | allocated) ;;
    *) die "node $host is '$state' after 60 s: $(sinfo -R -h 2>/dev/null); see $STATE_DIR/slurmd.log" ;;
esac
say "ready"
sinfo
