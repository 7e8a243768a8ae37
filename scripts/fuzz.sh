#!/usr/bin/env bash
# Coverage-guided fuzzing of what a client can send (fuzz/README.md):
#
#   scripts/fuzz.sh [SECONDS] [TARGET]     # default 300 s, target http
#   DS_FUZZ_STORAGE=file scripts/fuzz.sh   # the server on file (or acid)
#
# Needs the nightly toolchain (rustup); installs cargo-fuzz when missing.
# The corpus starts from fuzz/seeds/TARGET and grows in a temporary
# directory; a crash or a 500 leaves its input there (the path is printed)
# and the script fails.
set -euo pipefail
SECS="${1:-300}"; TARGET="${2:-http}"
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ds-fuzz.XXXXXX")"
mkdir -p "$WORK/corpus"
cp fuzz/seeds/"$TARGET"/* "$WORK/corpus/"
# The server's own lock file, so the fuzzed build has the tested versions.
cp Cargo.lock fuzz/Cargo.lock
echo "fuzzing $TARGET (${DS_FUZZ_STORAGE:-memory}) for $SECS s; corpus, data and findings in $WORK"
# The server's data directory (file, acid) goes under TMPDIR.
TMPDIR="$WORK" cargo +nightly fuzz run -O "$TARGET" --fuzz-dir fuzz "$WORK/corpus" -- \
  -dict=fuzz/http.dict -max_len=4096 -timeout=10 \
  -max_total_time="$SECS" -artifact_prefix="$WORK/" -print_final_stats=1
