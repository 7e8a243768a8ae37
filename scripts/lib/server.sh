# shellcheck shell=bash
# Shared helpers for scripts/conformance.sh and scripts/clients.sh: build the
# release binary, run `durable-streams serve` on a random loopback port with a
# fresh temporary data dir, always stop it again, and report vitest results.
#
# Usage, from a script running under `set -euo pipefail`:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"
#   ds_init NAME BACKEND          # NAME: "conformance" or "clients"; sets ROOT, BIN,
#                                 # STARTUP_TIMEOUT_S; ds_log prints "[NAME:BACKEND] ..."
#   ds_build_server               # cargo build --release (unless DS_SKIP_BUILD=1), check BIN
#   ds_install_npm_deps DIR       # `npm ci` in DIR unless its vitest is installed
#   ds_start_server LONG_POLL_MS  # temp WORK dir + cleanup traps; starts the server and
#                                 # sets SERVER_PID, BASE_URL, RESULTS_JSON
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
# On exit the trap SIGTERMs the server (SIGKILL after 5 s), prints the server
# log if the exit status is non-zero, removes WORK and keeps the exit status.

# ds_init NAME BACKEND
ds_init() {
  DS_NAME="$1"
  BACKEND="$2"
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
  BIN="$TARGET_DIR/release/durable-streams"
  STARTUP_TIMEOUT_S="${DS_STARTUP_TIMEOUT_S:-30}"
  WORK=""
  SERVER_LOG=""
  SERVER_PID=""
  SUITE_RC=0
}

# ds_log MESSAGE... -- "[NAME:BACKEND] MESSAGE" on stderr.
ds_log() { echo "[$DS_NAME:$BACKEND] $*" >&2; }

# ds_build_server -- build the release binary unless DS_SKIP_BUILD=1; exit 1
# if BIN is missing afterwards.
ds_build_server() {
  if [[ "${DS_SKIP_BUILD:-0}" != "1" ]]; then
    ds_log "building release binary"
    (cd "$ROOT" && cargo build --release --locked --bin durable-streams)
  fi
  if [[ ! -x "$BIN" ]]; then
    ds_log "server binary not found at $BIN"
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
  if [[ -n "$SERVER_LOG" && -f "$SERVER_LOG" ]]; then
    echo "----- server log ($BACKEND) -----" >&2
    cat "$SERVER_LOG" >&2 || true
    echo "----- end server log -----" >&2
  fi
}

# EXIT trap: stop the server, print its log on failure, remove WORK.
ds_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      ds_log "server did not stop on SIGTERM, sending SIGKILL"
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 ]]; then
    ds_print_server_log
  fi
  if [[ -n "$WORK" ]]; then rm -rf "$WORK"; fi
  exit "$rc"
}

# ds_start_server LONG_POLL_MS -- create the temp WORK dir, install the cleanup
# traps, start `durable-streams serve` in the background and wait for its
# "listening on http://HOST:PORT" line. Sets SERVER_PID, BASE_URL (http://HOST:PORT),
# SERVER_LOG and RESULTS_JSON. Exits 1 if the server dies or times out first.
ds_start_server() {
  local long_poll_ms="$1" data_dir deadline srv_rc
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/ds-$DS_NAME.XXXXXX")"
  data_dir="$WORK/data"
  SERVER_LOG="$WORK/server.log"
  RESULTS_JSON="$WORK/results.json"
  mkdir -p "$data_dir"
  SERVER_PID=""
  trap ds_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  ds_log "starting $BIN (storage=$BACKEND, data-dir=$data_dir)"
  NO_COLOR=1 "$BIN" serve \
    --bind 127.0.0.1:0 \
    --storage "$BACKEND" \
    --data-dir "$data_dir" \
    --long-poll-timeout "${long_poll_ms}ms" \
    >"$SERVER_LOG" 2>&1 </dev/null &
  SERVER_PID=$!

  BASE_URL=""
  deadline=$((SECONDS + STARTUP_TIMEOUT_S))
  while [[ $SECONDS -lt $deadline ]]; do
    # Strip ANSI colour codes, then take host:port only (tolerates JSON logs,
    # quotes and a trailing slash).
    BASE_URL="$(sed 's/\x1b\[[0-9;]*m//g' "$SERVER_LOG" 2>/dev/null \
      | grep -o 'listening on http://[][A-Za-z0-9.:_-]*' \
      | head -n1 | sed 's/^listening on //' || true)"
    if [[ -n "$BASE_URL" ]]; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID" 2>/dev/null && srv_rc=0 || srv_rc=$?
      ds_log "server exited (status $srv_rc) before it started listening"
      SERVER_PID=""
      exit 1
    fi
    sleep 0.1
  done
  if [[ -z "$BASE_URL" ]]; then
    ds_log "server did not print 'listening on http://HOST:PORT' within ${STARTUP_TIMEOUT_S}s"
    exit 1
  fi
  ds_log "server is listening on $BASE_URL (pid $SERVER_PID)"
}

# ds_vitest [ARGS...] -- `vitest run` in the current directory, writing the JSON
# report to RESULTS_JSON as well as the default console report.
ds_vitest() {
  npx --no vitest run \
    --reporter=default --reporter=json --outputFile.json="$RESULTS_JSON" \
    "$@"
}

# ds_finish_suite LABEL [FORBID_SKIPS] -- after the suite ran (its status in
# SUITE_RC): fail if the server died, print the "NAME-BACKEND: N passed,
# N failed, N skipped" line from RESULTS_JSON, then log "LABEL passed" or
# "LABEL FAILED (exit N)" and exit with that non-zero status.
# With FORBID_SKIPS given, the summary is strict: an unreadable report fails
# the run, and FORBID_SKIPS=1 also fails it on any skipped or todo test.
ds_finish_suite() {
  local label="$1" forbid_skips="${2-}"
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    ds_log "server died during the suite"
    [[ $SUITE_RC -ne 0 ]] || SUITE_RC=1
  fi

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
