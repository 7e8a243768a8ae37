# shellcheck shell=bash
# Shared helpers for scripts/conformance.sh and scripts/clients.sh: build the
# release binary, run `durable-streams serve` on a random loopback port with a
# fresh temporary data dir, always stop it again, and report vitest results.
#
# BACKEND is passed to `serve --storage`, except for two multi-process setups:
#   postgres         one node on a fresh database of scripts/pg.sh's server
#   postgres_2nodes  two nodes on one fresh database behind examples/rr_proxy,
#                    which sends each request to the next node in turn; BASE_URL
#                    is the proxy's
#
# Usage, from a script running under `set -euo pipefail`:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"
#   ds_init NAME BACKEND          # NAME: "conformance" or "clients"; sets ROOT, BIN,
#                                 # STARTUP_TIMEOUT_S; ds_log prints "[NAME:BACKEND] ..."
#   ds_build_server               # cargo build --release (unless DS_SKIP_BUILD=1), check BIN
#                                 # (and the rr_proxy example for the postgres backends)
#   ds_install_npm_deps DIR       # `npm ci` in DIR unless its vitest is installed
#   ds_start_server LONG_POLL_MS  # temp WORK dir + cleanup traps; starts the server(s) and
#                                 # sets SERVER_PID (the first node), BASE_URL, RESULTS_JSON
#   SUITE_RC=0
#   ( cd DIR; export DS_BASE_URL="$BASE_URL" ...; ds_vitest "$@" ) || SUITE_RC=$?
#   ds_finish_suite LABEL [FORBID_SKIPS]
#                                 # prints "NAME-BACKEND: N passed, N failed, N skipped"
#                                 # (parsed by scripts/test.sh); exits non-zero on failure
#
# ds_start_server and ds_finish_suite call `exit`: call them at the top level of
# the script (not in $(...), a pipeline or a subshell).
#
# Environment: CARGO_TARGET_DIR, DS_SKIP_BUILD ("1" skips the build),
# DS_STARTUP_TIMEOUT_S (default 30), TMPDIR.
#
# On exit the trap SIGTERMs the proxy and every node (SIGKILL after 5 s),
# prints their logs if the exit status is non-zero, drops the run's database,
# removes WORK and keeps the exit status.

# ds_init NAME BACKEND
ds_init() {
  DS_NAME="$1"
  BACKEND="$2"
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
  BIN="$TARGET_DIR/release/durable-streams"
  PROXY_BIN="$TARGET_DIR/release/examples/rr_proxy"
  STARTUP_TIMEOUT_S="${DS_STARTUP_TIMEOUT_S:-30}"
  WORK=""
  SERVER_PID=""
  SUITE_RC=0
  # Every process started (nodes, then the proxy) with its log, and the
  # database of a postgres run: the cleanup trap stops and drops them.
  PIDS=()
  LOGS=()
  PG_DB=""
}

# ds_is_postgres -- true for the backends that run on scripts/pg.sh's server.
ds_is_postgres() { [[ "$BACKEND" == postgres || "$BACKEND" == postgres_2nodes ]]; }

# ds_log MESSAGE... -- "[NAME:BACKEND] MESSAGE" on stderr.
ds_log() { echo "[$DS_NAME:$BACKEND] $*" >&2; }

# ds_build_server -- build the release binary unless DS_SKIP_BUILD=1; exit 1
# if BIN is missing afterwards.
ds_build_server() {
  if [[ "${DS_SKIP_BUILD:-0}" != "1" ]]; then
    ds_log "building release binary"
    if ds_is_postgres; then
      (cd "$ROOT" && cargo build --release --locked --bin durable-streams --example rr_proxy)
    else
      (cd "$ROOT" && cargo build --release --locked --bin durable-streams)
    fi
  fi
  if [[ ! -x "$BIN" ]]; then
    ds_log "server binary not found at $BIN"
    exit 1
  fi
  if ds_is_postgres && [[ ! -x "$PROXY_BIN" ]]; then
    ds_log "proxy binary not found at $PROXY_BIN"
    exit 1
  fi
}

# ds_install_npm_deps DIR -- `npm ci` in DIR if vitest is not installed there.
ds_install_npm_deps() {
  local dir="$1"
  if [[ ! -x "$dir/node_modules/.bin/vitest" ]]; then
    ds_log "installing npm dependencies (npm ci)"
    (cd "$dir" && npm ci --no-audit --no-fund)
  fi
}

ds_print_server_log() {
  local log
  for log in "${LOGS[@]}"; do
    if [[ -f "$log" ]]; then
      echo "----- $(basename "$log" .log) log ($BACKEND) -----" >&2
      cat "$log" >&2 || true
      echo "----- end $(basename "$log" .log) log -----" >&2
    fi
  done
}

# ds_stop_pid PID -- SIGTERM, SIGKILL after 5 s, reap.
ds_stop_pid() {
  local pid="$1"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    ds_log "process $pid did not stop on SIGTERM, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# EXIT trap: stop the proxy and the nodes (last started first), print their
# logs on failure, drop the run's database, remove WORK.
ds_cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    ds_stop_pid "${PIDS[i]}"
  done
  if [[ $rc -ne 0 ]]; then
    ds_print_server_log
  fi
  if [[ -n "$PG_DB" ]]; then "$ROOT/scripts/pg.sh" dropdb "$PG_DB" || true; fi
  if [[ -n "$WORK" ]]; then rm -rf "$WORK"; fi
  exit "$rc"
}

# ds_spawn NAME CMD... -- start CMD in the background with its output in
# WORK/NAME.log, wait for its "listening on http://HOST:PORT" line and set
# SPAWNED_PID and SPAWNED_URL. Exits 1 if it dies or times out first.
ds_spawn() {
  local name="$1" log="$WORK/$1.log" deadline rc url=""
  shift
  NO_COLOR=1 "$@" >"$log" 2>&1 </dev/null &
  SPAWNED_PID=$!
  PIDS+=("$SPAWNED_PID")
  LOGS+=("$log")
  deadline=$((SECONDS + STARTUP_TIMEOUT_S))
  while [[ $SECONDS -lt $deadline ]]; do
    # Strip ANSI colour codes, then take host:port only (tolerates JSON logs,
    # quotes and a trailing slash).
    url="$(sed 's/\x1b\[[0-9;]*m//g' "$log" 2>/dev/null \
      | grep -o 'listening on http://[][A-Za-z0-9.:_-]*' \
      | head -n1 | sed 's/^listening on //' || true)"
    if [[ -n "$url" ]]; then break; fi
    if ! kill -0 "$SPAWNED_PID" 2>/dev/null; then
      wait "$SPAWNED_PID" 2>/dev/null && rc=0 || rc=$?
      ds_log "$name exited (status $rc) before it started listening"
      exit 1
    fi
    sleep 0.1
  done
  if [[ -z "$url" ]]; then
    ds_log "$name did not print 'listening on http://HOST:PORT' within ${STARTUP_TIMEOUT_S}s"
    exit 1
  fi
  SPAWNED_URL="$url"
  ds_log "$name is listening on $url (pid $SPAWNED_PID)"
}

# ds_start_node NAME LONG_POLL_MS [EXTRA SERVE ARGS...] -- `durable-streams
# serve` with its own data dir WORK/NAME; sets SPAWNED_PID and SPAWNED_URL.
ds_start_node() {
  local name="$1" long_poll_ms="$2" storage="$BACKEND"
  shift 2
  if ds_is_postgres; then storage=postgres; fi
  mkdir -p "$WORK/$name"
  ds_log "starting $name: $BIN serve --storage $storage $*"
  # The proxy, for tests/clients/proxy.test.ts (its upstream is on loopback).
  DS_PROXY_ENABLED=true DS_PROXY_ALLOWLIST='http://127.0.0.1:*/*' \
  ds_spawn "$name" "$BIN" serve \
    --bind 127.0.0.1:0 \
    --storage "$storage" \
    --data-dir "$WORK/$name" \
    --long-poll-timeout "${long_poll_ms}ms" \
    "$@"
}

# ds_start_server LONG_POLL_MS -- create the temp WORK dir, install the cleanup
# traps and start what BACKEND needs (see the top): one node, or for
# postgres_2nodes two nodes and the proxy. Sets SERVER_PID (the first node),
# BASE_URL (http://HOST:PORT the suite talks to) and RESULTS_JSON.
# Exits 1 if a process dies or times out before it listens.
# shellcheck disable=SC2034  # SERVER_PID and BASE_URL are for the calling script
ds_start_server() {
  local long_poll_ms="$1" db_url node1 node2
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/ds-$DS_NAME.XXXXXX")"
  RESULTS_JSON="$WORK/results.json"
  SERVER_PID=""
  trap ds_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  case "$BACKEND" in
    postgres | postgres_2nodes)
      # A fresh database per run: the suite's streams must not meet old ones.
      PG_DB="ds_${DS_NAME}_$$_$(date +%s)"
      ds_log "creating database $PG_DB (scripts/pg.sh)"
      db_url="$("$ROOT/scripts/pg.sh" createdb "$PG_DB")"
      ds_start_node server "$long_poll_ms" --database-url "$db_url"
      SERVER_PID="$SPAWNED_PID"
      BASE_URL="$SPAWNED_URL"
      if [[ "$BACKEND" == postgres_2nodes ]]; then
        node1="$SPAWNED_URL"
        ds_start_node server2 "$long_poll_ms" --database-url "$db_url"
        node2="$SPAWNED_URL"
        # --log: one line per request (which node answered) in the log printed on failure.
        ds_spawn proxy "$PROXY_BIN" --bind 127.0.0.1:0 --log --backend "$node1" --backend "$node2"
        BASE_URL="$SPAWNED_URL"
      fi
      ;;
    *)
      ds_start_node server "$long_poll_ms"
      SERVER_PID="$SPAWNED_PID"
      BASE_URL="$SPAWNED_URL"
      ;;
  esac
}

# ds_vitest [ARGS...] -- `vitest run` in the current directory, writing the JSON
# report to RESULTS_JSON as well as the default console report.
ds_vitest() {
  npx --no vitest run \
    --reporter=default --reporter=json --outputFile.json="$RESULTS_JSON" \
    "$@"
}

# ds_finish_suite LABEL [FORBID_SKIPS] -- after the suite ran (its status in
# SUITE_RC): fail if a server (or the proxy) died, print the "NAME-BACKEND: N passed,
# N failed, N skipped" line from RESULTS_JSON, then log "LABEL passed" or
# "LABEL FAILED (exit N)" and exit with that non-zero status.
# With FORBID_SKIPS given, the summary is strict: an unreadable report fails
# the run, and FORBID_SKIPS=1 also fails it on any skipped or todo test.
ds_finish_suite() {
  local label="$1" forbid_skips="${2-}" i
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
      ds_log "$(basename "${LOGS[i]}" .log) died during the suite"
      [[ $SUITE_RC -ne 0 ]] || SUITE_RC=1
    fi
  done

  if [[ -f "$RESULTS_JSON" ]]; then
    # shellcheck disable=SC2016  # JavaScript template literals, not shell
    if ! node -e '
      const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      const skipped = (r.numPendingTests || 0) + (r.numTodoTests || 0);
      console.log(`${process.argv[2]}: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
      if (process.argv[3] === "1" && skipped > 0) process.exit(1);
    ' "$RESULTS_JSON" "$DS_NAME-$BACKEND" "${forbid_skips:-0}"; then
      if [[ -n "$forbid_skips" ]]; then
        ds_log "skipped tests are not allowed"
        [[ $SUITE_RC -ne 0 ]] || SUITE_RC=1
      fi
    fi
  else
    ds_log "no vitest results file was written"
    [[ $SUITE_RC -ne 0 ]] || SUITE_RC=1
  fi

  if [[ $SUITE_RC -ne 0 ]]; then
    ds_log "$label FAILED (exit $SUITE_RC)"
    exit "$SUITE_RC"
  fi
  ds_log "$label passed"
}
