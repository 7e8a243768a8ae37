#!/usr/bin/env bash
# User-space instructions per append, counted by callgrind: a figure that
# machine load cannot move (BENCHMARKS.md quotes it).
#
#   scripts/callgrind-append.sh BINARY STORAGE [N]
#
# Starts BINARY under `valgrind --tool=callgrind` with `--storage STORAGE`
# (memory, file or acid; durable ones in a fresh temporary data directory;
# for the official server's `durable-streams-server`, memory or wal),
# creates one stream, sends 300 warm-up 100-byte POSTs on one keep-alive
# connection, zeroes the counters, sends N more (default 3000), dumps, and
# prints "instructions_per_append=X" (the dump's total over N: startup and
# warm-up are excluded, idle background threads are not).
# SERVER_ARGS (default "--log-level warn") are passed to `serve`; set it to
# "" to count the defaults a user runs. PRODUCER=1 sends every append as an
# idempotent producer's (Producer-Id, -Epoch, -Seq), as the load
# generator's producer workload does.
set -euo pipefail
BIN="$(realpath "$1")"; STORAGE="$2"; N="${3:-3000}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ds-cg.XXXXXX")"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { [[ -f "$WORK/server.log" ]] && grep -v "^==" "$WORK/server.log" | tail -5 >&2; [[ -n "${PID:-}" ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
cd "$WORK"
if [[ $(basename "$BIN") == durable-streams-server ]]; then
  # The official Rust server (crates.io durable-streams): STORAGE memory
  # is its `--durability memory`, anything else its default (wal).
  ARGS=(--port "$PORT" --data-dir "$WORK/data")
  [[ $STORAGE == memory ]] && ARGS+=(--durability memory)
else
  # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
  ARGS=(serve --storage "$STORAGE" --data-dir "$WORK/data" --bind "127.0.0.1:$PORT" ${SERVER_ARGS---log-level warn})
fi
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out.%p" "$BIN" "${ARGS[@]}" >"$WORK/server.log" 2>&1 &
PID=$!
python3 - "$PORT" "$N" "$PID" "${PRODUCER:-0}" <<'PY'
import http.client, subprocess, sys, time
port, n, pid, producer = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
for _ in range(3000):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120); c.connect(); break
    except OSError:
        time.sleep(0.1)
body = b"x" * 100
seq = 0
def req(method, path, data=None):
    global seq
    headers = {"Content-Type": "application/octet-stream"}
    if producer and method == "POST":
        headers.update({"Producer-Id": "cg", "Producer-Epoch": "0", "Producer-Seq": str(seq)})
        seq += 1
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse(); r.read()
    assert r.status < 300, (method, r.status)
req("PUT", "/v1/stream/cg")
for _ in range(300): req("POST", "/v1/stream/cg", body)
subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
for _ in range(n): req("POST", "/v1/stream/cg", body)
subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
PY
sleep 1
total=$(grep -h '^summary:\|^totals:' "$WORK"/cg.out.* | awk '{print $2}' | sort -n | tail -1)
echo "instructions_per_append=$(( total / N )) storage=$STORAGE producer=${PRODUCER:-0} n=$N binary=$BIN"
