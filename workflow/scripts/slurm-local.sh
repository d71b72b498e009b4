#!/usr/bin/env bash
# slurm-local.sh up|down|status - a real single-node SLURM cluster on this machine.
#
# For Debian 12 (bookworm) machines without systemd, run as root (CI, a test VM, a
# workstation where you want to try the cluster path before your institution's cluster).
#   up      installs Debian's Slurm 22.05 (slurmctld, slurmd, slurm-client), munge and,
#           unless SLURM_LOCAL_ACCOUNTING=0, slurmdbd + a private MariaDB (127.0.0.1 only);
#           writes the configs (node line from `slurmd -C`); starts the daemons by hand
#           (no systemd, no cgroups); waits until `sinfo` shows the node idle and
#           `srun hostname` works. Safe to re-run while the cluster is up.
#   down    cancels leftover jobs, then stops exactly the daemons `up` started, by the pids
#           it recorded in /run/slurm-local (never by name); packages, configs and the
#           database stay, so the next `up` takes seconds.
#   status  what runs, sinfo and squeue.
# Adapted from the tested recipe in the team's cluster notes (every pitfall met there is
# handled here: EnforcePartLimits so an impossible job fails at submit instead of hanging
# snakemake, DefMemPerCPU, MinJobAge for squeue status, stale pid files, dpkg lock waits).
#
# Settings (environment variables):
#   SLURM_LOCAL_ACCOUNTING=1   1: private MariaDB + slurmdbd, so `sacct` works (the slurm
#                              executor plugin's default status command). 0: none; then
#                              snakemake needs --slurm-status-command squeue.
#   SLURM_LOCAL_DB_PORT=3307   TCP port (127.0.0.1 only) of the private MariaDB
#   SLURM_LOCAL_CLUSTER=localcluster
#   SLURM_LOCAL_PARTITION=debug
#   SLURM_LOCAL_WAIT_S=60      how long to wait for each daemon
#   SLURM_LOCAL_STOP_WAIT_S=30 how long `down` waits for a daemon before SIGKILL
set -euo pipefail

STATE_DIR=/run/slurm-local            # pid files of the daemons started here
LOG_DIR=/var/log/slurm

cmd_up() {
ACCOUNTING="${SLURM_LOCAL_ACCOUNTING:-1}"
DB_PORT="${SLURM_LOCAL_DB_PORT:-3307}"
CLUSTER="${SLURM_LOCAL_CLUSTER:-localcluster}"
PARTITION="${SLURM_LOCAL_PARTITION:-debug}"
WAIT_S="${SLURM_LOCAL_WAIT_S:-60}"

DB_DIR=/var/lib/slurm-local/mysql     # datadir of the private MariaDB
DB_RUN=/run/slurm-local/mysqld        # its socket + pid file
DB_CNF=/etc/slurm/slurm-local-mariadb.cnf

T_START_MS=$(( $(date +%s%N) / 1000000 ))
log() { echo "[slurm-local up] $(date +%T) $*"; }
die() { echo "[slurm-local up] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
case "$ACCOUNTING" in 0|1) ;; *) die "SLURM_LOCAL_ACCOUNTING must be 0 or 1" ;; esac

# pid_alive PIDFILE COMM -> prints pid if the pid file names a live process
# whose command name is COMM.
pid_alive() {
  local f=$1 comm=$2 pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' < "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  [ "$(cat "/proc/$pid/comm")" = "$comm" ] || return 1
  echo "$pid"
}

# wait_for SECONDS DESCRIPTION COMMAND... -> polls COMMAND every 0.5 s
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
  log "$what: ok ($(elapsed)s since start)"
}
elapsed() { local ms=$(( $(date +%s%N) / 1000000 - T_START_MS )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }

# start_daemon NAME DAEMON_PIDFILE COMMAND... -> runs COMMAND (which must
# daemonize and write DAEMON_PIDFILE) unless NAME is already running.
start_daemon() {
  local name=$1 pidfile=$2 pid; shift 2
  if pid=$(pid_alive "$pidfile" "$name"); then
    if [ "$(pid_alive "$STATE_DIR/$name.pid" "$name" || true)" = "$pid" ]; then
      log "$name already running (pid $pid, started by this script earlier)"
    else
      log "$name already running (pid $pid, NOT started by this script; reusing it)"
    fi
    return 0
  fi
  rm -f "$pidfile"
  "$@"
  local deadline=$(( $(date +%s) + WAIT_S ))
  until pid=$(pid_alive "$pidfile" "$name"); do
    [ "$(date +%s)" -lt "$deadline" ] || die "$name did not start (no live pid in $pidfile); see logs in $LOG_DIR"
    sleep 0.2
  done
  echo "$pid" > "$STATE_DIR/$name.pid"
  log "started $name (pid $pid)"
}

# ---------------------------------------------------------------- packages
pkgs=(munge slurm-client slurmctld slurmd)
# mariadb-server-core + mariadb-client (not mariadb-server): only the binaries,
# no system database, no init script; the private instance runs as user slurm.
[ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server-core mariadb-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[slurm-local up] $(date +%T) installing: ${missing[*]}"
  # DPkg::Lock::Timeout: wait (instead of failing) if another apt/dpkg runs.
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
fi
log "packages ready ($(elapsed)s); slurmctld $(dpkg-query -W -f='${Version}' slurmctld), munge $(dpkg-query -W -f='${Version}' munge)"

mkdir -p /etc/slurm "$STATE_DIR" "$LOG_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
chown slurm:slurm "$LOG_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd

# ---------------------------------------------------------------- hostname
NODE=$(hostname -s)
if ! getent hosts "$NODE" >/dev/null; then
  log "hostname $NODE does not resolve; adding '127.0.0.1 $NODE' to /etc/hosts"
  echo "127.0.0.1 $NODE" >> /etc/hosts
fi
# Hardware line as slurmd itself detects it (CPUs, sockets, cores, RealMemory).
HW=$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ //')
echo "$HW" | grep -q 'RealMemory=' || die "could not parse 'slurmd -C': $HW"

# ---------------------------------------------------------------- slurm.conf
if [ "$ACCOUNTING" = 1 ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
NEW_CONF=$(mktemp)
cat > "$NEW_CONF" <<EOF
# Written by slurm-local-up.sh: single-node cluster on localhost.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
CryptoType=crypto/munge
# slurmd binds to NodeAddr (127.0.0.1) instead of 0.0.0.0 (slurmctld and
# slurmdbd 22.05 still listen on 0.0.0.0:6817/6819):
CommunicationParameters=NoInAddrAny
MpiDefault=none
# No cgroups/systemd needed:
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
# Reject at submit time a job that can never run here (e.g. more CPUs or memory
# than the node has) instead of leaving it PENDING forever (snakemake then hangs).
EnforcePartLimits=ALL
SlurmUser=slurm
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
# CPUs only, not memory, are consumable: with CR_Core_Memory every job step (srun) of
# Slurm 22.05 claims all of its job's memory unless srun gets --mem, which the snakemake
# jobstep plugin (0.6.x) never passes, so the jobs of a Snakemake batch (group) job ran one
# at a time on half its CPUs (measured: two 5-s steps in a 2-CPU job took 10 s; 5 s with
# CR_Core; the demo's batch jobs gained little, 52 -> 48 s, as each job in them starts its
# own Snakemake, which is most of their time). Jobs still
# state --mem (the workflow's mem_mb), and a request beyond the node's RealMemory is still
# refused at submit.
SelectTypeParameters=CR_Core
# A job without --mem gets this much (without it: the whole node's memory).
DefMemPerCPU=1024
JobCompType=jobcomp/none
# squeue keeps finished jobs for MinJobAge seconds; the snakemake plugin's
# squeue status mode wants >= 3 x its initial status-check delay.
MinJobAge=300
$ACCT_LINES
NodeName=$NODE NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if pid_alive /run/slurmctld.pid slurmctld >/dev/null && ! cmp -s "$NEW_CONF" /etc/slurm/slurm.conf; then
  rm -f "$NEW_CONF"
  die "slurmctld is running with a different /etc/slurm/slurm.conf (e.g. other SLURM_LOCAL_ACCOUNTING); run `slurm-local.sh down` first"
fi
install -m 0644 "$NEW_CONF" /etc/slurm/slurm.conf; rm -f "$NEW_CONF"
log "wrote /etc/slurm/slurm.conf (node: NodeName=$NODE $HW; accounting=$ACCOUNTING)"

# ---------------------------------------------------------------- munge
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
chmod 0755 /run/munge; chmod 0700 /etc/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  runuser -u munge -- /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
wait_for "$WAIT_S" "munge round trip" bash -c 'munge -n | unmunge' || die "munge does not work; see /var/log/munge/munged.log"

# ---------------------------------------------------------------- accounting
if [ "$ACCOUNTING" = 1 ]; then
  mkdir -p "$DB_DIR" "$DB_RUN"
  chown slurm:slurm "$DB_DIR" "$DB_RUN"
  cat > "$DB_CNF" <<EOF
# Private MariaDB for slurmdbd, written by slurm-local-up.sh (127.0.0.1:$DB_PORT only).
[mysqld]
user=slurm
datadir=$DB_DIR
socket=$DB_RUN/mysqld.sock
pid-file=$DB_RUN/mysqld.pid
bind-address=127.0.0.1
port=$DB_PORT
log-error=$DB_DIR/mariadb-error.log
innodb_buffer_pool_size=1024M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
EOF
  if [ ! -d "$DB_DIR/mysql" ]; then
    log "initialising MariaDB datadir $DB_DIR"
    mariadb-install-db --defaults-file="$DB_CNF" --skip-test-db \
      --auth-root-authentication-method=socket > "$LOG_DIR/slurm-local-mariadb-init.log" 2>&1 \
      || die "mariadb-install-db failed; see $LOG_DIR/slurm-local-mariadb-init.log"
  fi
  # mariadbd does not fork by itself: detach it with setsid and let it write its pid file.
  start_daemon mariadbd "$DB_RUN/mysqld.pid" \
    bash -c "setsid /usr/sbin/mariadbd --defaults-file='$DB_CNF' </dev/null >/dev/null 2>&1 &"
  wait_for "$WAIT_S" "mariadb ping" mariadb-admin --socket="$DB_RUN/mysqld.sock" ping \
    || die "MariaDB not answering; see $DB_DIR/mariadb-error.log"

  # slurmdbd.conf (keep the DB password across runs)
  DB_PASS=""
  [ -f /etc/slurm/slurmdbd.conf ] && DB_PASS=$(sed -n 's/^StoragePass=//p' /etc/slurm/slurmdbd.conf)
  [ -n "$DB_PASS" ] || DB_PASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  mariadb --socket="$DB_RUN/mysqld.sock" <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
  (umask 077; cat > /etc/slurm/slurmdbd.conf <<EOF
# Written by slurm-local-up.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  )
  # slurmdbd refuses a slurmdbd.conf that is not owned by SlurmUser / is readable by others
  chown slurm:slurm /etc/slurm/slurmdbd.conf; chmod 0600 /etc/slurm/slurmdbd.conf

  start_daemon slurmdbd /run/slurmdbd.pid /usr/sbin/slurmdbd
  wait_for "$WAIT_S" "slurmdbd answers sacctmgr" sacctmgr -n list cluster \
    || die "slurmdbd not answering; see $LOG_DIR/slurmdbd.log"
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    log "registered cluster $CLUSTER in slurmdbd"
  fi
fi

# ---------------------------------------------------------------- slurm daemons
start_daemon slurmctld /run/slurmctld.pid /usr/sbin/slurmctld
wait_for "$WAIT_S" "slurmctld ping" bash -c 'scontrol ping | grep -q UP' \
  || die "slurmctld not answering; see $LOG_DIR/slurmctld.log"
start_daemon slurmd /run/slurmd.pid /usr/sbin/slurmd

node_idle() {
  local st
  st=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1)
  case "$st" in
    idle|mixed|allocated) return 0 ;;
    down*|drain*|drained*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true; return 1 ;;
    *) return 1 ;;
  esac
}
wait_for "$WAIT_S" "node $NODE idle in sinfo" node_idle \
  || die "node $NODE not idle: $(sinfo -N -h -n "$NODE" -o '%T %E'); see $LOG_DIR/slurmd.log"

wait_for 30 "srun hostname" timeout 25 srun -N1 -n1 -t 1 hostname \
  || die "srun hostname failed"

sinfo
log "cluster up in $(elapsed)s (accounting=$ACCOUNTING). Started by this script: $(cd "$STATE_DIR" && ls -- *.pid 2>/dev/null | tr '\n' ' ')"
}

cmd_down() {
  set +e  # best effort: stop whatever can be stopped
STOP_WAIT_S="${SLURM_LOCAL_STOP_WAIT_S:-30}"

log() { echo "[slurm-local down] $(date +%T) $*"; }

[ "$(id -u)" = 0 ] || { echo "[slurm-local down] ERROR: must run as root" >&2; exit 1; }

pid_of() {  # pid_of NAME -> live pid recorded by the up script, if its comm is NAME
  local name=$1 f="$STATE_DIR/$1.pid" pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' < "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ] || return 1
  echo "$pid"
}

# The daemons' own pid files. slurmctld and slurmdbd leave theirs behind on
# exit, and /run may be on disk (not tmpfs): a stale /run/slurmctld.pid makes
# Debian's slurmctld prerm run scancel and fail `apt-get remove slurmctld`.
daemon_pidfile() {
  case $1 in
    slurmd) echo /run/slurmd.pid ;;
    slurmctld) echo /run/slurmctld.pid ;;
    slurmdbd) echo /run/slurmdbd.pid ;;
    mariadbd) echo /run/slurm-local/mysqld/mysqld.pid ;;
    munged) echo /run/munge/munged.pid ;;
  esac
}

stop_one() {
  local name=$1 pid i dpf
  if ! pid=$(pid_of "$name"); then
    [ -e "$STATE_DIR/$name.pid" ] && log "$name: recorded pid not running any more; forgetting it"
    rm -f "$STATE_DIR/$name.pid"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_WAIT_S * 4; i++)); do
    [ -d "/proc/$pid" ] || break
    sleep 0.25
  done
  if [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    log "$name (pid $pid) ignored SIGTERM for ${STOP_WAIT_S}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  dpf=$(daemon_pidfile "$name")
  if [ -n "$dpf" ] && [ -f "$dpf" ] && [ "$(tr -dc '0-9' < "$dpf")" = "$pid" ]; then
    rm -f "$dpf"
  fi
  rm -f "$STATE_DIR/$name.pid"
}

# Cancel leftover jobs through the scheduler before the daemons go away, so
# no slurmstepd/job processes are orphaned.
if pid_of slurmctld >/dev/null && command -v squeue >/dev/null; then
  jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED,CONFIGURING -o '%i' 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling leftover jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
      [ -z "$(squeue -h -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING -o '%i' 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi

for name in slurmd slurmctld slurmdbd mariadbd munged; do
  stop_one "$name"
done

left=$(ls "$STATE_DIR"/*.pid 2>/dev/null || true)
if [ -n "$left" ]; then
  log "unexpected pid files left: $left"
  exit 1
fi
log "done"
}

cmd_status() {
  local name pid
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    if [ -s "$STATE_DIR/$name.pid" ] && pid=$(tr -dc '0-9' < "$STATE_DIR/$name.pid") \
       && [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
      echo "$name: running (pid $pid, started by slurm-local.sh)"
    else
      echo "$name: not running (or not started by slurm-local.sh)"
    fi
  done
  if command -v sinfo >/dev/null && [ -f /etc/slurm/slurm.conf ]; then
    sinfo 2>&1 || true
    squeue 2>&1 || true
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
