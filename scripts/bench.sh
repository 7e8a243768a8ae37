#!/usr/bin/env bash
# End-to-end HTTP benchmark: builds our server, the load generator
# (benches/load.rs) and a bare axum baseline (benches/axum_baseline.rs) in
# release mode, installs the peers into scratch directories, then starts each
# server in turn and runs every workload against it, all in ONE run, so the
# ratios in BENCHMARKS.md compare figures taken on the same machine, same load.
#
#   scripts/bench.sh                 # everything
#   BENCH_SECS=3 BENCH_TARGETS="ours-memory peer-memory" scripts/bench.sh
#
# The postgres targets (not in the default list) use scripts/pg.sh's private
# server (DS_PG_DIR, DS_PG_PORT as there) and a fresh database per workload:
# ours-postgres is one node; ours-postgres-2nodes is two nodes on one
# database, and the load generator spreads its connections (and fan-out
# subscribers) over both, alternating, while setup and the live workloads'
# writer use the first node; ours-postgres-2nodes-rr is the same two nodes
# behind examples/rr_proxy.rs (round robin per request).
#
# BENCH_SERVER_CPUS / BENCH_LOAD_CPUS (taskset lists, e.g. 0 and 1): pin every
# server process (all its threads) and the load generator to those CPUs, so
# that neither takes the other's CPU time (on a small machine a server that
# answers faster can otherwise starve the load generator, whose own queue then
# shows up as the server's latency: BENCHMARKS.md, thirteenth session).
#
# BENCH_ROUNDS (default 1): repeat the whole set that many times. Within a
# round every workload runs against each target in turn, so that ours and the
# peers alternate and a drift of the machine (this one has modes ~20 % apart)
# falls on all of them; scripts/bench-rounds.py turns the rounds into medians
# of per-round ratios (issue 16's measure).
#
# Results: one `RESULT server=... round=... workload=...` line each in
# $BENCH_OUT/results.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${BENCH_OUT:-$ROOT/target/bench}
SECS=${BENCH_SECS:-5}
SCRATCH=${BENCH_SCRATCH:-/tmp/ds-bench}
PEER_ROOT=${PEER_ROOT:-/tmp/peer}
NODE_DIR=${NODE_DIR:-/tmp/perf-node}
CREATE_COUNT=${BENCH_CREATE_COUNT:-100000}
TARGETS=${BENCH_TARGETS:-"ours-memory ours-memory-hyper ours-file ours-acid axum-baseline node-memory peer-memory peer-wal"}
WORKLOADS=${BENCH_WORKLOADS:-"append1 append256 append100k producer catchup tailread fanout longpoll idle create"}
FANOUT_SUBS=${BENCH_FANOUT_SUBS:-10000}
LONGPOLL_SUBS=${BENCH_LONGPOLL_SUBS:-10000}
SPREAD_STREAMS=${BENCH_SPREAD_STREAMS:-100000}
PORT=${BENCH_PORT:-18400}
PGSH=$ROOT/scripts/pg.sh
ROUNDS=${BENCH_ROUNDS:-1}
SERVER_CPUS=${BENCH_SERVER_CPUS:-}
LOAD_CPUS=${BENCH_LOAD_CPUS:-}

# 10,000 SSE subscribers need 10,000 sockets on each side.
ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT" "$SCRATCH"
RESULTS=$OUT/results.txt
: >"$RESULTS"
log() { echo "== $*" >&2; }

{
  echo "MACHINE nproc=$(nproc) mem=\"$(free -m | awk '/Mem:/{print $2" MiB"}')\" kernel=$(uname -r) date=$(date -u +%FT%TZ)"
  echo "MACHINE uptime=\"$(uptime)\""
} >>"$RESULTS"

log "building (release)"
cargo build --release --bin durable-streams --example rr_proxy >&2 || exit 1
mapfile -t EXES < <(cargo bench --no-run --bench load --bench axum_baseline --message-format=json 2>/dev/null |
  jq -r 'select(.executable != null) | .executable')
LOAD=$(printf '%s\n' "${EXES[@]}" | grep '/load-')
BASE=$(printf '%s\n' "${EXES[@]}" | grep '/axum_baseline-')
[ -x "$LOAD" ] && [ -x "$BASE" ] || { log "bench binaries not found"; exit 1; }
OURS=$ROOT/target/release/durable-streams
RR_PROXY=$ROOT/target/release/examples/rr_proxy

# Peers. Failure to install one is recorded and the run goes on.
PEER=$PEER_ROOT/bin/durable-streams-server
if [[ " $TARGETS " == *" peer-"* && ! -x $PEER ]]; then
  log "installing crates.io durable-streams into $PEER_ROOT"
  cargo install durable-streams --root "$PEER_ROOT" >&2 ||
    echo "RESULT server=peer error=\"cargo install durable-streams failed\"" >>"$RESULTS"
fi
if [[ " $TARGETS " == *" node-"* ]]; then
  if [ ! -d "$NODE_DIR/node_modules/@durable-streams/server" ]; then
    log "installing @durable-streams/server into $NODE_DIR"
    mkdir -p "$NODE_DIR"
    (cd "$NODE_DIR" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install @durable-streams/server >&2) ||
      echo "RESULT server=node error=\"npm install @durable-streams/server failed\"" >>"$RESULTS"
  fi
  # The package exports a DurableStreamTestServer class (no bin); in-memory
  # when no dataDir is given.
  cat >"$NODE_DIR/bench-start.mjs" <<'JS'
import { DurableStreamTestServer } from "@durable-streams/server"
const port = Number(process.argv[2])
const server = new DurableStreamTestServer({ port, host: "127.0.0.1" })
await server.start()
console.log(`listening on http://127.0.0.1:${port}`)
process.on("SIGTERM", async () => { await server.stop(); process.exit(0) })
JS
  echo "MACHINE node=$(node --version) node_server=$(jq -r .version "$NODE_DIR/node_modules/@durable-streams/server/package.json" 2>/dev/null)" >>"$RESULTS"
fi
if [[ " $TARGETS " == *" ours-postgres"* ]]; then
  log "starting PostgreSQL (scripts/pg.sh)"
  if PG_URL=$("$PGSH" start); then
    echo "MACHINE postgres=\"$(psql "$PG_URL" -Atc 'SHOW server_version')\" $(psql "$PG_URL" -At -F= \
      -c "SELECT name, setting FROM pg_settings WHERE name IN ('fsync','synchronous_commit','wal_sync_method','shared_buffers','max_connections') ORDER BY name" | tr '\n' ' ')" >>"$RESULTS"
  else
    echo "RESULT server=ours-postgres error=\"scripts/pg.sh start failed\"" >>"$RESULTS"
  fi
fi
[ -x "$PEER" ] && echo "MACHINE peer=$("$PEER" --version 2>/dev/null || echo durable-streams-0.1.5)" >>"$RESULTS"

SERVER_PID= # comma-separated when a target runs several nodes
ADDR=       # likewise
DB_URL=     # the postgres targets' database
# wait_listening NAME LOG PID: waits for the "listening on http://" line.
wait_listening() {
  local name=$1 logf=$2 pid=$3
  for _ in $(seq 1 600); do
    grep -q "listening on http://" "$logf" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  log "$name did not start: $(tail -n 5 "$logf")"
  echo "RESULT server=$name error=\"did not start: $(tail -n 1 "$logf" | tr '"' "'")\"" >>"$RESULTS"
  return 1
}

# start_server NAME DATA_DIR: starts target NAME on a fresh port; waits for
# its "listening on http://" line. DATA_DIR is reused when it exists.
start_server() {
  local name=$1 dir=$2
  PORT=$((PORT + 1))
  local logf=$OUT/$name.log
  SERVER_PID=
  ADDR=
  case $name in
    ours-memory) "$OURS" serve --bind 127.0.0.1:$PORT --storage memory --log-level warn >"$logf" 2>&1 & ;;
    ours-memory-hyper) "$OURS" serve --bind 127.0.0.1:$PORT --storage memory --http-engine hyper --log-level warn >"$logf" 2>&1 & ;;
    ours-file) "$OURS" serve --bind 127.0.0.1:$PORT --storage file --data-dir "$dir" --log-level warn >"$logf" 2>&1 & ;;
    ours-file-active) DS_LIVE_PARKING=false "$OURS" serve --bind 127.0.0.1:$PORT --storage file --data-dir "$dir" --log-level warn >"$logf" 2>&1 & ;;
    ours-memory-active) DS_LIVE_PARKING=false "$OURS" serve --bind 127.0.0.1:$PORT --storage memory --log-level warn >"$logf" 2>&1 & ;;
    ours-acid) "$OURS" serve --bind 127.0.0.1:$PORT --storage acid --data-dir "$dir" --log-level warn >"$logf" 2>&1 & ;;
    axum-baseline) DS_BASELINE_BIND=127.0.0.1:$PORT "$BASE" >"$logf" 2>&1 & ;;
    node-memory) (cd "$NODE_DIR" && exec node bench-start.mjs $PORT) >"$logf" 2>&1 & ;;
    peer-memory) "$PEER" --port $PORT --data-dir "$dir" --durability memory >"$logf" 2>&1 & ;;
    peer-wal) "$PEER" --port $PORT --data-dir "$dir" >"$logf" 2>&1 & ;;
    ours-postgres) "$OURS" serve --bind 127.0.0.1:$PORT --storage postgres --database-url "$DB_URL" --log-level warn >"$logf" 2>&1 & ;;
    ours-postgres-2nodes | ours-postgres-2nodes-rr)
      # One node after the other, so that the first one leads (it makes no
      # difference to these workloads, but keeps runs alike).
      local p pid nodes=()
      for p in $PORT $((PORT + 1)); do
        "$OURS" serve --bind 127.0.0.1:$p --storage postgres --database-url "$DB_URL" \
          --advertise-url http://127.0.0.1:$p --log-level warn >"$OUT/$name.$p.log" 2>&1 &
        pid=$!
        SERVER_PID+=${SERVER_PID:+,}$pid
        ADDR+=${ADDR:+,}127.0.0.1:$p
        nodes+=(--backend http://127.0.0.1:$p)
        wait_listening "$name" "$OUT/$name.$p.log" $pid || return 1
      done
      PORT=$((PORT + 2))
      [ "$name" = ours-postgres-2nodes ] && return 0
      # The -rr variant: every request through examples/rr_proxy.rs, which
      # sends each request (not connection) to the next node. The proxy
      # shares the CPUs, and its RSS is counted with the nodes'.
      "$RR_PROXY" --bind 127.0.0.1:$PORT "${nodes[@]}" >"$logf" 2>&1 &
      pid=$!
      SERVER_PID+=,$pid
      ADDR=127.0.0.1:$PORT
      wait_listening "$name" "$logf" $pid
      return
      ;;
    *) log "unknown target $name"; return 1 ;;
  esac
  SERVER_PID=$!
  ADDR=127.0.0.1:$PORT
  wait_listening "$name" "$logf" $SERVER_PID
}

# pin_server: pins every thread of every server process to $SERVER_CPUS
# (threads started later inherit it), when set.
pin_server() {
  [ -n "$SERVER_CPUS" ] || return 0
  local pid
  for pid in ${SERVER_PID//,/ }; do
    taskset -a -p -c "$SERVER_CPUS" "$pid" >/dev/null || log "could not pin $pid to $SERVER_CPUS"
  done
}

# stop_server [GRACE_S]: SIGTERM, then SIGKILL after GRACE_S (default 10) s.
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pids=${SERVER_PID//,/ }
  # shellcheck disable=SC2086 # one word per node
  kill $pids 2>/dev/null
  for _ in $(seq 1 $((${1:-10} * 20))); do
    # shellcheck disable=SC2086
    kill -0 $pids 2>/dev/null || break
    sleep 0.05
  done
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null
  # shellcheck disable=SC2086
  wait $pids 2>/dev/null
  SERVER_PID=
}

# load NAME WORKLOAD_LABEL VAR=VALUE...: runs the load generator once.
load() {
  local name=$1 label=$2
  shift 2
  log "$name $label ($(cut -d' ' -f1-3 /proc/loadavg))"
  local pin=()
  [ -n "$LOAD_CPUS" ] && pin=(taskset -c "$LOAD_CPUS")
  pin_server
  env DS_LOAD_TARGET="$ADDR" DS_SERVER_PID="$SERVER_PID" DS_LOAD_SECS="$SECS" "$@" "${pin[@]}" "$LOAD" 2>>"$OUT/$name.load.err" |
    grep '^RESULT' | sed "s/^RESULT /RESULT server=$name round=$round label=$label /" | tee -a "$RESULTS" >&2
}

trap stop_server EXIT

for round in $(seq 1 "$ROUNDS"); do
  for w in $WORKLOADS; do
    for name in $TARGETS; do
      [ "$name" = axum-baseline ] && [[ $w != append1 && $w != append256 && $w != idle ]] && continue
      [ "$w" = create ] && [[ $name != ours-file && $name != ours-acid && $name != peer-wal ]] && continue
      [ "$w" = append100k ] && [[ $name = axum-baseline || $name = node-memory ]] && continue
      # The hyper engine row compares the HTTP layer only: appends, reads, live reads.
      [ "$name" = ours-memory-hyper ] && [[ $w = append100k || $w = catchup || $w = longpoll ]] && continue
      # rr_proxy holds two sockets per subscriber: 10,000 SSE subscribers
      # exceed a hard limit of 20,000 descriptors.
      [ "$name" = ours-postgres-2nodes-rr ] && [[ $w = fanout || $w = longpoll || $w = idle ]] && continue
      dir=$SCRATCH/$name-$w
      rm -rf "$dir"
      mkdir -p "$dir"
      if [[ $name == ours-postgres* ]]; then
        db=bench_${name//-/_}_$w # named after the target, for pg_stat_activity
        DB_URL=$("$PGSH" createdb "$db") || {
          echo "RESULT server=$name round=$round label=$w error=\"scripts/pg.sh createdb failed\"" >>"$RESULTS"
          continue
        }
      fi
      start_server "$name" "$dir" || { stop_server; continue; }
      case $w in
        append1) load "$name" append1 DS_LOAD_WORKLOAD=append DS_LOAD_STREAMS=1 ;;
        append256) load "$name" append256 DS_LOAD_WORKLOAD=append DS_LOAD_STREAMS=256 ;;
        append100k) load "$name" append100k DS_LOAD_WORKLOAD=append DS_LOAD_STREAMS="$SPREAD_STREAMS" ;;
        producer) load "$name" producer DS_LOAD_WORKLOAD=producer DS_LOAD_STREAMS=1 ;;
        catchup) load "$name" catchup DS_LOAD_WORKLOAD=catchup ;;
        tailread) load "$name" tailread DS_LOAD_WORKLOAD=tailread ;;
        fanout) load "$name" fanout DS_LOAD_WORKLOAD=fanout DS_LOAD_SUBS="$FANOUT_SUBS" ;;
        longpoll) load "$name" longpoll DS_LOAD_WORKLOAD=longpoll DS_LOAD_SUBS="$LONGPOLL_SUBS" ;;
        idle) load "$name" idle DS_LOAD_WORKLOAD=idle ;;
        create)
          load "$name" create DS_LOAD_WORKLOAD=create DS_LOAD_COUNT="$CREATE_COUNT" DS_LOAD_RUN=bench
          # A server that failed to create them all has no restart to time
          # (the wait below is for the last one created).
          if tail -n 1 "$RESULTS" | grep -q "server=$name round=$round label=create error="; then
            stop_server
            rm -rf "$dir"
            continue
          fi
          # Restart time, measured twice on the same data: after a graceful
          # stop (up to 120 s, timed), and after kill -9 of the restarted
          # server once 1,000 more appends (to every 100th stream) were
          # acknowledged, so recovery has a WAL to replay. Each: from exec
          # until the listening line, and until a stream created before the
          # restart answers.
          t0=$(date +%s%N)
          stop_server 120
          stop_ms=$((($(date +%s%N) - t0) / 1000000))
          restart_row() { # restart_row LABEL EXTRA_FIELDS
            local label=$1 extra=$2 t0 t1 listen_ms
            t0=$(date +%s%N)
            start_server "$name" "$dir" || return 1
            listen_ms=$((($(date +%s%N) - t0) / 1000000))
            local waited=0
            until curl -sf -o /dev/null "http://$ADDR/v1/stream/bench-c$((CREATE_COUNT - 1))?offset=-1"; do
              kill -0 "$SERVER_PID" 2>/dev/null || return 1
              # A stream that never answers is a failed restart, not a hang.
              ((waited++ < 12000)) || {
                echo "RESULT server=$name round=$round label=$label error=\"no answer for the last stream in 120 s\"" | tee -a "$RESULTS" >&2
                return 1
              }
              sleep 0.01
            done
            t1=$(date +%s%N)
            echo "RESULT server=$name round=$round label=$label streams=$CREATE_COUNT $extra listen_ms=$listen_ms restart_ms=$(((t1 - t0) / 1000000)) data_kib=$(du -sk "$dir" | cut -f1) load1=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$RESULTS" >&2
          }
          if restart_row restart "stop_ms=$stop_ms"; then
            for i in $(seq 0 100 $((CREATE_COUNT - 1))); do
              printf 'more' | curl -sf -o /dev/null -X POST -H 'Content-Type: application/octet-stream' \
                --data-binary @- "http://$ADDR/v1/stream/bench-c$i" || break
            done
            kill -9 "$SERVER_PID" 2>/dev/null
            wait "$SERVER_PID" 2>/dev/null
            SERVER_PID=
            restart_row restart_kill "appended=$((CREATE_COUNT / 100))"
          fi
          ;;
      esac
      stop_server
      rm -rf "$dir"
      [[ $name == ours-postgres* ]] && "$PGSH" dropdb "$db"
    done
  done
done
echo "MACHINE uptime_end=\"$(uptime)\"" >>"$RESULTS"
log "results in $RESULTS"
