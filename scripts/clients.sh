#!/usr/bin/env bash
# Real-client end-to-end tests: the official TypeScript client
# (@durable-streams/client) and headless Chromium running examples/tail.html,
# against the release binary.
#
# Usage: scripts/clients.sh [BACKEND] [extra vitest args...]
#   BACKEND defaults to "memory" (passed to `durable-streams serve --storage`);
#   every backend gets a fresh temporary --data-dir.
#   Extra args go to `vitest run`, e.g. scripts/clients.sh memory -t "long-poll"
#
# Environment:
#   DS_LONG_POLL_TIMEOUT_MS  server long-poll timeout, also told to the tests (default 1000)
#   DS_STARTUP_TIMEOUT_S     seconds to wait for the server to start (default 30)
#   DS_SKIP_BUILD            "1" to skip `cargo build --release` (binary must exist)
#   CHROMIUM_PATH            browser binary (default /usr/bin/chromium)
#
# Builds the release binary, installs the npm deps (npm ci) if missing, makes
# sure Chromium is installed (apt-get when running as root), starts the server
# on a random loopback port, runs the vitest suite in tests/clients, and always
# stops the server and removes the temp dir. Exits non-zero on any failure.
set -euo pipefail

BACKEND="${1:-memory}"
if [[ $# -gt 0 ]]; then shift; fi
# A full run (no vitest filter args) must not skip anything.
FULL_RUN=$([[ $# -eq 0 ]] && echo 1 || echo 0)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENTS_DIR="$ROOT/tests/clients"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/release/durable-streams"
LONG_POLL_MS="${DS_LONG_POLL_TIMEOUT_MS:-1000}"
STARTUP_TIMEOUT_S="${DS_STARTUP_TIMEOUT_S:-30}"
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"

log() { echo "[clients:$BACKEND] $*" >&2; }

# --- build -------------------------------------------------------------------
if [[ "${DS_SKIP_BUILD:-0}" != "1" ]]; then
  log "building release binary"
  (cd "$ROOT" && cargo build --release --locked --bin durable-streams)
fi
if [[ ! -x "$BIN" ]]; then
  log "server binary not found at $BIN"
  exit 1
fi

# --- npm deps ----------------------------------------------------------------
if [[ ! -x "$CLIENTS_DIR/node_modules/.bin/vitest" ]]; then
  log "installing npm dependencies (npm ci)"
  (cd "$CLIENTS_DIR" && npm ci --no-audit --no-fund)
fi

# --- browser -----------------------------------------------------------------
if [[ ! -x "$CHROMIUM" ]]; then
  if [[ "$CHROMIUM" == /usr/bin/chromium && "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing chromium (apt-get)"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
  fi
  if [[ ! -x "$CHROMIUM" ]]; then
    log "Chromium not found at $CHROMIUM. Install it (Debian: apt-get install -y chromium," \
      "as root) or set CHROMIUM_PATH to a Chromium/Chrome binary."
    exit 1
  fi
fi

# --- start server ------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ds-clients.XXXXXX")"
DATA_DIR="$WORK/data"
SERVER_LOG="$WORK/server.log"
RESULTS_JSON="$WORK/results.json"
mkdir -p "$DATA_DIR"
SERVER_PID=""

print_server_log() {
  if [[ -f "$SERVER_LOG" ]]; then
    echo "----- server log ($BACKEND) -----" >&2
    cat "$SERVER_LOG" >&2 || true
    echo "----- end server log -----" >&2
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      log "server did not stop on SIGTERM, sending SIGKILL"
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 ]]; then
    print_server_log
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting $BIN (storage=$BACKEND, data-dir=$DATA_DIR)"
NO_COLOR=1 "$BIN" serve \
  --bind 127.0.0.1:0 \
  --storage "$BACKEND" \
  --data-dir "$DATA_DIR" \
  --long-poll-timeout "${LONG_POLL_MS}ms" \
  >"$SERVER_LOG" 2>&1 </dev/null &
SERVER_PID=$!

BASE_URL=""
deadline=$((SECONDS + STARTUP_TIMEOUT_S))
while [[ $SECONDS -lt $deadline ]]; do
  # Strip ANSI colour codes, then take host:port only.
  BASE_URL="$(sed 's/\x1b\[[0-9;]*m//g' "$SERVER_LOG" 2>/dev/null \
    | grep -o 'listening on http://[][A-Za-z0-9.:_-]*' \
    | head -n1 | sed 's/^listening on //' || true)"
  if [[ -n "$BASE_URL" ]]; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    wait "$SERVER_PID" 2>/dev/null && srv_rc=0 || srv_rc=$?
    log "server exited (status $srv_rc) before it started listening"
    SERVER_PID=""
    exit 1
  fi
  sleep 0.1
done
if [[ -z "$BASE_URL" ]]; then
  log "server did not print 'listening on http://HOST:PORT' within ${STARTUP_TIMEOUT_S}s"
  exit 1
fi
log "server is listening on $BASE_URL (pid $SERVER_PID)"

# --- run suite ---------------------------------------------------------------
suite_rc=0
(
  cd "$CLIENTS_DIR"
  DS_BASE_URL="$BASE_URL" \
  DS_LONG_POLL_TIMEOUT_MS="$LONG_POLL_MS" \
  CHROMIUM_PATH="$CHROMIUM" \
    npx --no vitest run \
      --reporter=default --reporter=json --outputFile.json="$RESULTS_JSON" \
      "$@"
) || suite_rc=$?

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  log "server died during the suite"
  [[ $suite_rc -ne 0 ]] || suite_rc=1
fi

# Plain summary line (parsed by scripts/test.sh).
if [[ -f "$RESULTS_JSON" ]]; then
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const skipped = (r.numPendingTests || 0) + (r.numTodoTests || 0);
    console.log(`clients-${process.argv[2]}: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
    // No skipped checks: in a full run a skipped or todo test is a failure.
    if (process.argv[3] === "1" && skipped > 0) process.exit(1);
  ' "$RESULTS_JSON" "$BACKEND" "$FULL_RUN" || { log "skipped tests are not allowed"; [[ $suite_rc -ne 0 ]] || suite_rc=1; }
else
  log "no vitest results file was written"
  [[ $suite_rc -ne 0 ]] || suite_rc=1
fi

if [[ $suite_rc -ne 0 ]]; then
  log "client tests FAILED (exit $suite_rc)"
  exit "$suite_rc"
fi
log "client tests passed"
