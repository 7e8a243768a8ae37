#!/usr/bin/env bash
# A private PostgreSQL server for the tests of the postgres storage backend.
#
# Usage:
#   scripts/pg.sh start          start the server unless it already runs; print its URL
#   scripts/pg.sh stop           stop it (`pg_ctl stop -m fast`); no error if it is not running
#   scripts/pg.sh restart        stop -m fast, then start on the same data; print the URL
#                                (tests use it, or stop + start, to simulate a database outage)
#   scripts/pg.sh createdb NAME  start the server if needed, (re)create an empty database
#                                NAME (an existing one is dropped first); print its URL
#   scripts/pg.sh dropdb NAME    drop database NAME if it exists
#   scripts/pg.sh status         exit 0 and print the URL if the server runs, else exit 3
#   scripts/pg.sh dir            print the data directory in use (see DS_PG_DIR)
#
# The URL, e.g. postgres://ds@127.0.0.1:54329/postgres, is the only thing
# printed on stdout; progress and errors go to stderr.
#
# Environment:
#   DS_PG_DIR   data directory (default $ROOT/target/pg; as root
#               /var/tmp/ds-pg-<checksum of $ROOT>, which user postgres can
#               always reach); the unix socket and the server log
#               (postgres.log) live in it too
#   DS_PG_PORT  TCP port on 127.0.0.1 (default 54329)
#   DS_PG_BIN   directory with initdb/pg_ctl/psql (default: the newest
#               /usr/lib/postgresql/*/bin, else the ones on PATH)
#
# The cluster is initdb'ed on first use with a superuser `ds` and trust
# authentication (loopback and socket only), max_connections=300 (several nodes
# each keep a pool), shared_buffers=128MB and fsync/synchronous_commit on:
# durability tests and benchmarks measure real commits. The settings live in
# ds.conf in the data directory and are rewritten on every start.
#
# PostgreSQL is installed with apt-get (Debian's `postgresql` package) when no
# server binaries are found and we are root; otherwise the script fails and
# says what to install. PostgreSQL refuses to run as root, so as root the data
# directory belongs to the `postgres` system user (created by Debian's package)
# and initdb/pg_ctl run through `runuser -u postgres --`. The package's own
# default cluster (port 5432) is left alone: we never use it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# As root the server runs as `postgres`, which cannot enter a checkout under
# a private directory (/root, a 0700 mktemp dir): keep its data in /var/tmp.
if [[ -z "${DS_PG_DIR:-}" && $(id -u) -eq 0 ]]; then
  DS_PG_DIR="/var/tmp/ds-pg-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
fi
PG_DIR="${DS_PG_DIR:-$ROOT/target/pg}"
case "$PG_DIR" in /*) ;; *) PG_DIR="$PWD/$PG_DIR" ;; esac
PG_PORT="${DS_PG_PORT:-54329}"
PG_USER=ds
PG_LOG="$PG_DIR/postgres.log"

log() { echo "[pg] $*" >&2; }
die() {
  log "$*"
  exit 1
}

url() { echo "postgres://$PG_USER@127.0.0.1:$PG_PORT/${1:-postgres}"; }

# find_bin -- set PG_BIN to the directory holding initdb, pg_ctl and psql, or "".
find_bin() {
  local d
  PG_BIN="${DS_PG_BIN:-}"
  if [[ -n "$PG_BIN" && ! -x "$PG_BIN/pg_ctl" ]]; then
    die "DS_PG_BIN=$PG_BIN has no pg_ctl; point it at PostgreSQL's bin directory"
  fi
  if [[ -z "$PG_BIN" ]]; then
    # The newest major version: sort -V puts 9.6 before 15.
    while read -r d; do
      if [[ -x "$d/initdb" ]]; then PG_BIN="$d"; fi
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
  fi
  if [[ -z "$PG_BIN" ]] && command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    PG_BIN="$(dirname "$(command -v initdb)")"
  fi
  return 0
}

# install_postgres -- apt-get install Debian's postgresql as root, or fail.
install_postgres() {
  find_bin
  [[ -n "$PG_BIN" ]] && return 0
  if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null; then
    die "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb," \
      "no initdb on PATH). Install them (Debian: apt-get install -y postgresql, as root)" \
      "or set DS_PG_BIN to the directory holding initdb and pg_ctl."
  fi
  log "installing postgresql (apt-get)"
  # Update the package lists only when they do not know the package, or when
  # an install from stale lists fails.
  if ! apt-cache show postgresql >/dev/null 2>&1; then apt-get update >&2; fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2; then
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2
  fi
  find_bin
  [[ -n "$PG_BIN" ]] || die "apt-get installed postgresql but no initdb was found"
}

# as_owner CMD... -- run CMD as the data directory's owner: `postgres` when we are root.
as_owner() {
  if [[ "$(id -u)" -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

running() { [[ -d "$PG_DIR" ]] && as_owner "$PG_BIN/pg_ctl" status -D "$PG_DIR" >/dev/null 2>&1; }

# The port the running server listens on (line 4 of postmaster.pid).
running_port() { sed -n 4p "$PG_DIR/postmaster.pid" 2>/dev/null || true; }

init_cluster() {
  [[ -f "$PG_DIR/PG_VERSION" ]] && return 0
  if [[ -d "$PG_DIR" && -n "$(ls -A "$PG_DIR")" ]]; then
    die "$PG_DIR exists but is not a PostgreSQL data directory; remove it or set DS_PG_DIR"
  fi
  log "initdb $PG_DIR"
  mkdir -p "$PG_DIR"
  chmod 700 "$PG_DIR"
  if [[ "$(id -u)" -eq 0 ]]; then
    getent passwd postgres >/dev/null ||
      die "running as root needs the 'postgres' system user (Debian's postgresql package creates it)"
    chown postgres:postgres "$PG_DIR"
    runuser -u postgres -- test -w "$PG_DIR" ||
      die "user postgres cannot reach $PG_DIR (a parent directory is not searchable); set DS_PG_DIR"
  fi
  as_owner "$PG_BIN/initdb" -D "$PG_DIR" -U "$PG_USER" --auth=trust \
    --encoding=UTF8 --locale=C >"$PG_DIR.initdb.log" 2>&1 || {
    cat "$PG_DIR.initdb.log" >&2
    die "initdb failed"
  }
  rm -f "$PG_DIR.initdb.log"
  echo "include_if_exists = 'ds.conf'" | as_owner tee -a "$PG_DIR/postgresql.conf" >/dev/null
}

# write_conf -- (re)write ds.conf, so a changed DS_PG_PORT applies on the next start.
write_conf() {
  as_owner tee "$PG_DIR/ds.conf" >/dev/null <<EOF
# Written by scripts/pg.sh on every start; edits are lost.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
max_connections = 300
shared_buffers = 128MB
fsync = on
synchronous_commit = on
EOF
}

cmd_start() {
  local port
  install_postgres
  [[ ${#PG_DIR} -le 80 ]] ||
    die "DS_PG_DIR is too long for a unix socket path (${#PG_DIR} > 80 characters): $PG_DIR"
  if running; then
    port="$(running_port)"
    [[ "$port" == "$PG_PORT" ]] ||
      die "the server in $PG_DIR runs on port $port, not $PG_PORT; run '$0 restart' to move it"
    url
    return 0
  fi
  init_cluster
  write_conf
  if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then
    die "another PostgreSQL server already listens on 127.0.0.1:$PG_PORT (not the one in" \
      "$PG_DIR); stop it or set DS_PG_PORT"
  fi
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT (data $PG_DIR, log $PG_LOG)"
  # 9>&-: the postmaster must not inherit (and hold forever) the lock below.
  if ! as_owner "$PG_BIN/pg_ctl" start -D "$PG_DIR" -l "$PG_LOG" -w -t 60 >&2 9>&-; then
    tail -n 30 "$PG_LOG" >&2 || true
    die "pg_ctl start failed (log: $PG_LOG)"
  fi
  url
}

cmd_stop() {
  find_bin
  [[ -n "$PG_BIN" ]] || return 0
  if running; then
    log "stopping PostgreSQL (data $PG_DIR)"
    as_owner "$PG_BIN/pg_ctl" stop -D "$PG_DIR" -m fast -w -t 60 >&2
  fi
}

check_name() {
  [[ "${1:-}" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] ||
    die "database name '${1:-}' must match [a-z_][a-z0-9_]* (at most 63 characters)"
}

# psql on the maintenance database; NOTICEs ("does not exist, skipping") are noise.
psql_admin() {
  PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres "$@"
}

cmd_createdb() {
  check_name "${1:-}"
  cmd_start >/dev/null
  # WITH (FORCE) ends sessions a previous, killed run may have left behind.
  psql_admin -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" -c "CREATE DATABASE \"$1\"" >&2
  url "$1"
}

cmd_dropdb() {
  check_name "${1:-}"
  find_bin
  [[ -n "$PG_BIN" ]] && running || return 0
  psql_admin -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >&2
}

cmd_status() {
  find_bin
  if [[ -n "$PG_BIN" ]] && running; then
    url
  else
    log "not running (data $PG_DIR)"
    exit 3
  fi
}

# Serialise concurrent invocations (parallel tests starting the server at once).
if command -v flock >/dev/null; then
  mkdir -p "$(dirname "$PG_DIR")"
  exec 9>"$PG_DIR.lock"
  # A wait this long means a stuck holder, e.g. a postmaster started by an
  # early pg.sh that leaked this descriptor: say so instead of hanging.
  flock -w 120 9 || die "$PG_DIR.lock is still held after 120 s (another pg.sh, or a" \
    "server that inherited the lock: stop it with pg_ctl stop -D $PG_DIR)"
fi

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart)
    cmd_stop
    cmd_start
    ;;
  createdb) cmd_createdb "${2:-}" ;;
  dropdb) cmd_dropdb "${2:-}" ;;
  status) cmd_status ;;
  dir) echo "$PG_DIR" ;;
  *)
    echo "usage: $0 start|stop|restart|status|dir|createdb NAME|dropdb NAME" >&2
    exit 2
    ;;
esac
