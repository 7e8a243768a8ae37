#!/usr/bin/env bash
# The long form of the reliability tests (RELIABILITY.md). The short forms
# run in scripts/test.sh through `cargo test`; this runs the same tests with
# larger budgets and collects the numbers RELIABILITY.md quotes.
#
#   scripts/reliability.sh                # everything, ~30-40 min on 2 cores
#   RELIABILITY_SCALE=0.2 scripts/reliability.sh   # a quicker pass
#
# Knobs (defaults are the long form; multiplied by RELIABILITY_SCALE):
#   DS_CRASH_CYCLES=200 DS_CRASH_STREAMS=8   kill -9 cycles per backend
#   DS_FAULT_ROUNDS=600                      injected-fault operations
#   DS_FUZZ_CASES=20                         fuzz case budget multiplier
#   DS_SOAK_SECS=600                         soak duration
#   DS_SEED=<n>                              seed for every randomized test
#
# Writes the summary to target/reliability/last-run.txt and ends with
# "reliability: N suites passed, N failed".
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scale="${RELIABILITY_SCALE:-1}"
scaled() { awk -v v="$1" -v s="$scale" 'BEGIN { n = int(v * s); print (n < 1 ? 1 : n) }'; }

export DS_CRASH_CYCLES="${DS_CRASH_CYCLES:-$(scaled 200)}"
export DS_CRASH_STREAMS="${DS_CRASH_STREAMS:-8}"
export DS_FAULT_ROUNDS="${DS_FAULT_ROUNDS:-$(scaled 600)}"
export DS_FUZZ_CASES="${DS_FUZZ_CASES:-$(scaled 20)}"
export DS_SOAK_SECS="${DS_SOAK_SECS:-$(scaled 600)}"
export DS_SEED="${DS_SEED:-$(date +%s)}"

out="$ROOT/target/reliability"
mkdir -p "$out"
summary="$out/last-run.txt"
{
  echo "reliability long form, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "seed $DS_SEED, crash cycles $DS_CRASH_CYCLES x $DS_CRASH_STREAMS streams, fault rounds $DS_FAULT_ROUNDS, fuzz x$DS_FUZZ_CASES, soak ${DS_SOAK_SECS}s"
} >"$summary"

cargo build --all-targets --locked >/dev/null 2>&1 || cargo build --all-targets --locked

passed=0
failed=0
run() {
  local name="$1"
  shift
  echo "==> $name"
  local log="$out/$name.log"
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "$name: ok" | tee -a "$summary"
  else
    failed=$((failed + 1))
    echo "$name: FAILED (see $log)" | tee -a "$summary"
    tail -n 30 "$log"
  fi
  # The numbers each test prints.
  grep -E '^(crash-harness|file fault injection|full disk|SKIPPED|hostile requests|idle connections|stalled SSE|oversized bodies|fuzz |soak:)' "$log" \
    | sed 's/^/  /' | tee -a "$summary"
}

run crash cargo test --locked --test reliability crash:: -- --nocapture --test-threads 1
run faults cargo test --locked --lib storage::file::fault_tests -- --nocapture
run full-disk cargo test --locked --test reliability full_disk:: -- --nocapture --test-threads 1
run hostile-requests cargo test --locked --test binary hostile:: -- --nocapture
run hostile-clients cargo test --locked --test binary hostile_clients:: -- --nocapture --test-threads 1
run fuzz cargo test --locked --test storage fuzz:: -- --nocapture
run soak cargo test --locked --test binary soak:: -- --nocapture

echo "reliability: $passed suites passed, $failed failed" | tee -a "$summary"
echo "summary: $summary"
[ "$failed" -eq 0 ]
