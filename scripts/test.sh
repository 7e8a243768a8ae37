#!/usr/bin/env bash
# The project's test command (CI runs exactly this via .ci/run).
#
#   scripts/test.sh
#
# 0. a PostgreSQL server for the postgres backend (scripts/pg.sh start,
#    installing Debian's package when root); its URL is exported as
#    DS_TEST_DATABASE_URL for the Rust tests (tests/common/pg.rs). If this
#    script started it, it stops it on exit.
# 1. `cargo fmt --check`, `cargo clippy --all-targets -- -D warnings` and
#    the developer docs (`cargo doc --document-private-items`, warnings
#    denied: a broken intra-doc link): unformatted code, a lint or a broken
#    link fails the run before any test
# 2. cargo unit/integration tests (all targets, then doc tests)
# 3. the upstream Durable Streams conformance suite against the release
#    binary, once per backend in $DS_BACKENDS (space separated, default
#    "memory file acid postgres postgres_2nodes"; e.g. DS_BACKENDS="memory").
#    postgres_2nodes is two nodes on one database behind a round-robin proxy
#    (see scripts/conformance.sh).
# 4. real-client end-to-end tests (scripts/clients.sh: the official
#    TypeScript client and examples/tail.html in headless Chromium) against
#    the release binary (memory backend).
#
# Fails fast on the first failure. Ends with a plain
# "total: N passed, N failed, N skipped" line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BACKENDS="${DS_BACKENDS:-memory file acid postgres postgres_2nodes}"
SUMMARY_LOG="$(mktemp "${TMPDIR:-/tmp}/ds-test-summary.XXXXXX")"
PG_STARTED=0
cleanup() {
  rm -f "$SUMMARY_LOG"
  if [[ $PG_STARTED -eq 1 ]]; then "$ROOT/scripts/pg.sh" stop || true; fi
}
trap cleanup EXIT

echo "==> PostgreSQL (scripts/pg.sh start)"
if ! "$ROOT/scripts/pg.sh" status >/dev/null 2>&1; then
  PG_STARTED=1
  # Not ours on the port (another checkout's test server, left running by a
  # `cargo test` there): ours would fail to start. Take a free port; the
  # tests' own pg.sh calls (outages) inherit it.
  if [[ -z "${DS_PG_PORT:-}" ]] && (: </dev/tcp/127.0.0.1/54329) 2>/dev/null; then
    DS_PG_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    export DS_PG_PORT
    echo "port 54329 is taken by another server: using $DS_PG_PORT"
  fi
fi
DS_TEST_DATABASE_URL="$("$ROOT/scripts/pg.sh" start)"
export DS_TEST_DATABASE_URL
echo "DS_TEST_DATABASE_URL=$DS_TEST_DATABASE_URL"

echo "==> cargo fmt --check"
cargo fmt --check

echo "==> cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "==> cargo doc --no-deps --document-private-items (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --locked

echo "==> cargo test --all-targets --locked"
cargo test --all-targets --locked 2>&1 | tee -a "$SUMMARY_LOG"

echo "==> cargo test --doc --locked"
cargo test --doc --locked 2>&1 | tee -a "$SUMMARY_LOG"

# The subscription APIs are served, so their 6 tests run too (338 per backend).
export DS_SUBSCRIPTIONS="${DS_SUBSCRIPTIONS:-1}"
for backend in $BACKENDS; do
  echo "==> conformance suite: $backend"
  "$ROOT/scripts/conformance.sh" "$backend" 2>&1 | tee -a "$SUMMARY_LOG"
done

echo "==> client tests (TypeScript client, headless Chromium)"
"$ROOT/scripts/clients.sh" memory 2>&1 | tee -a "$SUMMARY_LOG"

# Sum cargo's "test result: ok. N passed; N failed; N ignored; ..." lines and
# conformance.sh's / clients.sh's "conformance-BACKEND: N passed, N failed,
# N skipped" and "clients-BACKEND: ..." lines.
sed 's/\x1b\[[0-9;]*m//g' "$SUMMARY_LOG" | awk '
  /^test result: / {
    for (i = 1; i <= NF; i++) {
      v = $(i - 1) + 0; w = $i; gsub(/[;,.]/, "", w)
      if (w == "passed") p += v; else if (w == "failed") f += v; else if (w == "ignored") s += v
    }
  }
  /^(conformance|clients)-[A-Za-z0-9_]+: [0-9]+ passed, [0-9]+ failed/ {
    for (i = 1; i <= NF; i++) {
      v = $(i - 1) + 0; w = $i; gsub(/[;,.]/, "", w)
      if (w == "passed") p += v; else if (w == "failed") f += v; else if (w == "skipped") s += v
    }
  }
  END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }
'
