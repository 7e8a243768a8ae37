#!/usr/bin/env python3
"""Issue 16's measure from a run of scripts/bench.sh with BENCH_ROUNDS > 1.

    BENCH_ROUNDS=5 BENCH_SECS=3 BENCH_WORKLOADS="append1 append256 producer" \\
      BENCH_TARGETS="ours-memory peer-memory ours-file peer-wal" scripts/bench.sh
    scripts/bench-rounds.py [RESULTS]

For each of our targets and the official server's run beside it (memory
against `--durability memory`, file and acid against its `wal`) and each
append workload: the ratio of throughput and of server CPU per append in
every round, ours over the official server's, and their medians. Ratios are
taken per round, not of the medians, so that a round the machine spent in a
slow mode compares two runs of that mode. The goal column is the issue's:
>= 1.25x the throughput at <= 0.8x the CPU.
"""
import statistics
import sys

PAIRS = [("ours-memory", "peer-memory"), ("ours-file", "peer-wal"), ("ours-acid", "peer-wal")]
WORKLOADS = [("append1", "1 stream"), ("append256", "256 streams"), ("producer", "producer"),
             ("append100k", "spread streams")]


def parse(path):
    """{(server, label): {round: fields}} of the lines that carry a round."""
    runs = {}
    for line in open(path):
        if not line.startswith("RESULT ") or " error=" in line:
            continue
        kv = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
        if "round" in kv and "label" in kv and "rps" in kv:
            runs.setdefault((kv["server"], kv["label"]), {})[int(kv["round"])] = kv
    return runs


def per_round(ours, peer, key):
    """Ours over the peer's `key`, for each round both have it."""
    out = []
    for r in sorted(set(ours) & set(peer)):
        a, b = ours[r].get(key), peer[r].get(key)
        if a is not None and b is not None and float(b) > 0:
            out.append(float(a) / float(b))
    return out


def each(ratios):
    return " / ".join(f"{x:.2f}" for x in ratios)


def main():
    runs = parse(sys.argv[1] if len(sys.argv) > 1 else "target/bench/results.txt")
    print("| ours vs official | workload | rounds | throughput (median, each round) "
          "| CPU per append (median, each round) | goal |")
    print("|---|---|---:|---|---|---|")
    for ours, peer in PAIRS:
        for label, title in WORKLOADS:
            a, b = runs.get((ours, label)), runs.get((peer, label))
            if not a or not b:
                continue
            thr = per_round(a, b, "rps")
            cpu = per_round(a, b, "server_cpu_us_per_req")
            if not thr:
                continue
            mt = statistics.median(thr)
            mc = statistics.median(cpu) if cpu else None
            met = mt >= 1.25 and mc is not None and mc <= 0.8
            print(f"| {ours} vs {peer} | {title} | {len(thr)} | **{mt:.3f}x** ({each(thr)}) "
                  f"| **{'—' if mc is None else f'{mc:.3f}x'}** ({each(cpu)}) | {'met' if met else 'not met'} |")


if __name__ == "__main__":
    main()
