#!/usr/bin/env bash
# Real-client end-to-end tests: the official TypeScript client
# (@durable-streams/client) and headless Chromium running examples/tail.html,
# against the release binary; and Chromium with 20 live EventSources over
# HTTPS/HTTP/2 (h2.test.ts starts its own TLS server; needs openssl); and
# nginx as a caching proxy in front (nginx.test.ts, its own server and nginx).
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
#   NGINX_PATH               nginx binary (default /usr/sbin/nginx; installed by apt-get as root)
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

# shellcheck source-path=SCRIPTDIR source=lib/server.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"
ds_init clients "$BACKEND"
CLIENTS_DIR="$ROOT/tests/clients"
LONG_POLL_MS="${DS_LONG_POLL_TIMEOUT_MS:-1000}"
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"

ds_build_server
ds_install_npm_deps "$CLIENTS_DIR"

# --- browser -----------------------------------------------------------------
if [[ ! -x "$CHROMIUM" ]]; then
  if [[ "$CHROMIUM" == /usr/bin/chromium && "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
    ds_log "installing chromium (apt-get)"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
  fi
  if [[ ! -x "$CHROMIUM" ]]; then
    ds_log "Chromium not found at $CHROMIUM. Install it (Debian: apt-get install -y chromium," \
      "as root) or set CHROMIUM_PATH to a Chromium/Chrome binary."
    exit 1
  fi
fi

# --- nginx (nginx.test.ts: the README's caching recipe in front) --------------
NGINX="${NGINX_PATH:-/usr/sbin/nginx}"
if [[ ! -x "$NGINX" ]]; then
  if [[ "$NGINX" == /usr/sbin/nginx && "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
    ds_log "installing nginx (apt-get)"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx
  fi
  if [[ ! -x "$NGINX" ]]; then
    ds_log "nginx not found at $NGINX. Install it (Debian: apt-get install -y nginx," \
      "as root) or set NGINX_PATH to an nginx binary."
    exit 1
  fi
fi

ds_start_server "$LONG_POLL_MS"

# --- run suite ---------------------------------------------------------------
SUITE_RC=0
(
  cd "$CLIENTS_DIR"
  export DS_BASE_URL="$BASE_URL"
  export DS_LONG_POLL_TIMEOUT_MS="$LONG_POLL_MS"
  export CHROMIUM_PATH="$CHROMIUM"
  # h2.test.ts starts its own HTTPS server with this binary.
  export DS_BIN="$BIN"
  export NGINX_PATH="$NGINX"
  ds_vitest "$@"
) || SUITE_RC=$?

# In a full run a skipped or todo test is a failure.
ds_finish_suite "client tests" "$FULL_RUN"
