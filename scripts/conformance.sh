#!/usr/bin/env bash
# Run the upstream Durable Streams conformance suite against this server.
#
# Usage: scripts/conformance.sh [BACKEND] [extra vitest args...]
#   BACKEND defaults to "memory" (passed to `durable-streams serve --storage`).
#   "postgres" runs one node on a fresh database of scripts/pg.sh's server;
#   "postgres_2nodes" runs two nodes on one fresh database behind
#   examples/rr_proxy, which sends each request to the next node in turn.
#   Extra args go to `vitest run`, e.g. scripts/conformance.sh memory -t "long-poll"
#
# Environment:
#   DS_LONG_POLL_TIMEOUT_MS  server long-poll timeout used by server and suite (default 500)
#   DS_SUBSCRIPTIONS         "1" to enable the suite's subscription API tests
#   DS_STARTUP_TIMEOUT_S     seconds to wait for the server to start (default 30)
#   DS_SKIP_BUILD            "1" to skip `cargo build --release` (binary must exist)
#
# Builds the release binary, starts it on a random loopback port with a fresh
# temporary data dir, runs the suite, and always stops the server(s) and the
# proxy, drops the database and removes the temp dir. Exits non-zero if the
# build, a server start, or the suite fails.
set -euo pipefail

BACKEND="${1:-memory}"
if [[ $# -gt 0 ]]; then shift; fi

# shellcheck source-path=SCRIPTDIR source=lib/server.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/server.sh"
ds_init conformance "$BACKEND"
CONF_DIR="$ROOT/tests/conformance"
LONG_POLL_MS="${DS_LONG_POLL_TIMEOUT_MS:-500}"

ds_build_server
ds_install_npm_deps "$CONF_DIR"
ds_start_server "$LONG_POLL_MS"

# --- run suite ---------------------------------------------------------------
SUITE_RC=0
(
  cd "$CONF_DIR"
  export DS_BASE_URL="$BASE_URL"
  export DS_LONG_POLL_TIMEOUT_MS="$LONG_POLL_MS"
  export DS_SUBSCRIPTIONS="${DS_SUBSCRIPTIONS:-0}"
  ds_vitest "$@"
) || SUITE_RC=$?

ds_finish_suite "conformance suite"
