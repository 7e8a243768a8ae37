#!/usr/bin/env python3
"""Turns scripts/bench.sh's results.txt into the Markdown tables of BENCHMARKS.md.

    bench-table.py [RESULTS [MORE_RESULTS...]]

The tables are of the first file (of its last round, when it was run with
BENCH_ROUNDS; scripts/bench-rounds.py gives the medians over the rounds).
Further files (repeated runs of the same command) add, to the PostgreSQL
section, each run's ratios and their median.
"""
import statistics
import sys


def parse(path):
    rows = {}
    for line in open(path):
        if not line.startswith("RESULT "):
            continue
        kv = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
        if "error=" in line:
            kv["error"] = line.split("error=", 1)[1].strip()
        if "label" in kv:
            rows[(kv["server"], kv["label"])] = kv
    return rows


paths = sys.argv[1:] or ["target/bench/results.txt"]
runs = [parse(p) for p in paths]
rows = runs[0]

SERVERS = ["ours-memory", "ours-memory-hyper", "ours-file", "ours-acid", "ours-postgres", "ours-postgres-2nodes",
           "ours-postgres-2nodes-rr", "axum-baseline", "node-memory", "peer-memory", "peer-wal"]
PG = ["ours-file", "ours-postgres", "ours-postgres-2nodes", "ours-postgres-2nodes-rr"]


def f(server, label, key):
    r = rows.get((server, label))
    if not r or key not in r:
        return None
    try:
        return float(r[key])
    except ValueError:
        return None


def fmt(v, nd=0):
    return "—" if v is None else f"{v:,.{nd}f}"


def ratio(a, b):
    return "—" if a is None or not b else f"{a / b:.2f}×"


def streams(label, default):
    for (_, l), r in rows.items():
        if l == label and "streams" in r:
            return f"{int(r['streams']):,}"
    return default


if any(s in PG[1:] for s, _ in rows):
    print("### PostgreSQL backend: one node and two nodes, against the file backend\n")
    print("Appends: req/s (p50 / p99 ms); *vs file* = req/s ÷ ours-file's.\n")
    print("| workload | " + " | ".join(PG) + " | " + " | ".join(f"{s} vs file" for s in PG[1:]) + " |")
    print("|---|" + "---:|" * (2 * len(PG) - 1))
    for label, title in [("append1", "appends, 1 stream"), ("append256", "appends, 256 streams"),
                         ("append100k", "appends, spread streams"), ("producer", "producer appends, 1 stream")]:
        if not any((s, label) in rows for s in PG):
            continue
        cells = []
        for s in PG:
            r = rows.get((s, label), {})
            v = f(s, label, "rps")
            if "error" in r:
                cells.append(f"failed: {r['error']}")
            elif v is None:
                cells.append("—")
            else:
                e = f(s, label, "errors")
                cells.append(f"{fmt(v)} ({fmt(f(s, label, 'p50_ms'), 2)} / {fmt(f(s, label, 'p99_ms'), 2)})"
                             + (f", {fmt(e)} errors" if e else ""))
        base = f("ours-file", label, "rps")
        print(f"| {title} | " + " | ".join(cells) + " | "
              + " | ".join(ratio(f(s, label, "rps"), base) for s in PG[1:]) + " |")
    print()
    print("SSE fan-out: 1 writer, " + next((f"{int(r['subs']):,}" for (s, l), r in rows.items()
                                             if l == "fanout" and s in PG and "subs" in r), "?")
          + " subscribers, 100 appends 50 ms apart; delays in ms.\n")
    print("*after ack*: subscriber receipt − writer's ack (0 when the event beat the ack); *after send*: receipt − "
          "the writer's send of the append, so it includes the commit and compares servers that wake readers "
          "before answering the writer with those that answer first; *file ÷ it* above 1× is faster than file. Two nodes: the writer and its setup use "
          "node 1, subscribers alternate between nodes 1 and 2.\n")
    print("| server | delivered / expected | after ack p50 / p99 / max | before ack | after send p50 / p99 | file ÷ it, after send p50 | "
          "node 1 (writer's) after send p50 / p99 | node 2 after send p50 / p99 | RSS per subscriber KiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = f("ours-file", "fanout", "send_p50_ms")
    for s in PG:
        r = rows.get((s, "fanout"))
        if r and "error" in r:
            print(f"| {s} | failed: {r['error']} | — | — | — | — | — | — | — |")
        elif r:
            split = ("—", "—") if "nodes" not in r else (
                f"{r.get('writer_node_send_p50_ms', '—')} / {r.get('writer_node_send_p99_ms', '—')}",
                f"{r.get('other_nodes_send_p50_ms', '—')} / {r.get('other_nodes_send_p99_ms', '—')}")
            print(f"| {s} | {r.get('delivered')} / {r.get('expected')} | {r.get('p50_ms')} / {r.get('p99_ms')} / {r.get('max_ms')} | "
                  f"{r.get('before_ack')} | {r.get('send_p50_ms', '—')} / {r.get('send_p99_ms', '—')} | "
                  f"{ratio(base, f(s, 'fanout', 'send_p50_ms'))} | {split[0]} | {split[1]} | {r.get('rss_per_sub_kib')} |")
    print()

if len(runs) > 1 and any(s in PG[1:] for s, _ in rows):
    print(f"Each run's ratio to ours-file in the same run, for {len(runs)} runs of the same command "
          "(the first is the run above), and their median. Appends: req/s ÷ file's; fan-out: file's "
          "after-send p50 ÷ it (so above 1× is faster than file, in both). The last column is two nodes "
          "against one node, the same way.\n")
    print("| workload | " + " | ".join(PG[1:]) + " | ours-postgres-2nodes vs ours-postgres |")
    print("|---|" + "---|" * len(PG))

    def run_ratio(r, s, label, key, inverse, base="ours-file"):
        try:
            a, b = float(r[(s, label)][key]), float(r[(base, label)][key])
        except (KeyError, ValueError):
            return None
        return (b / a if inverse else a / b) if a and b else None

    for label, key, inverse in [("append1", "rps", False), ("append256", "rps", False), ("append100k", "rps", False),
                                ("producer", "rps", False), ("fanout", "send_p50_ms", True)]:
        if not any((s, label) in rows for s in PG[1:]):
            continue
        cells = []
        for s, base in [(s, "ours-file") for s in PG[1:]] + [("ours-postgres-2nodes", "ours-postgres")]:
            rs = [run_ratio(r, s, label, key, inverse, base) for r in runs]
            ok = [x for x in rs if x is not None]
            if not ok:
                cells.append("—")
                continue
            cells.append(" ".join("—" if x is None else f"{x:.2f}" for x in rs) + f" → **{statistics.median(ok):.2f}×**")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()

for label, title in [("append1", "Appends, 100 B, 64 connections, 1 stream"),
                     ("append256", "Appends, 100 B, 64 connections, 256 streams"),
                     ("append100k", f"Appends, 100 B, 64 connections, spread over {streams('append100k', '100,000')} streams"),
                     ("producer", "Idempotent-producer appends, 64 producers, 1 stream")]:
    print(f"### {title}\n")
    print("| server | req/s | p50 ms | p99 ms | errors | server CPU µs / req | load generator CPU µs / req | load1 | ours-memory / it | ours-file / it | ours-acid / it |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    om, of, oa = (f(s, label, "rps") for s in ("ours-memory", "ours-file", "ours-acid"))
    for s in SERVERS:
        v = f(s, label, "rps")
        if v is None:
            if "error" in rows.get((s, label), {}):
                print(f"| {s} | failed: {rows[(s, label)]['error']} | — | — | — | — | — | — | — | — | — |")
            continue
        print(f"| {s} | {fmt(v)} | {fmt(f(s, label, 'p50_ms'), 2)} | {fmt(f(s, label, 'p99_ms'), 2)} | "
              f"{fmt(f(s, label, 'errors'))} | {rows[(s, label)].get('server_cpu_us_per_req', '—')} | "
              f"{rows[(s, label)].get('load_cpu_us_per_req', '—')} | {rows[(s, label)].get('load1', '')} | "
              f"{ratio(om, v)} | {ratio(of, v)} | {ratio(oa, v)} |")
    print()

print("### Catch-up read of a 64 MiB stream (best of 3 reads)\n")
print("| server | MB/s (best) | each read | requests per read | ours-memory / it | ours-file / it | ours-acid / it |")
print("|---|---:|---|---:|---:|---:|---:|")
om, of, oa = (f(s, "catchup", "best_mbps") for s in ("ours-memory", "ours-file", "ours-acid"))
for s in SERVERS:
    v = f(s, "catchup", "best_mbps")
    if v is None:
        continue
    r = rows[(s, "catchup")]
    print(f"| {s} | {fmt(v)} | {r.get('rounds_mbps')} | {r.get('requests_per_read')} | {ratio(om, v)} | {ratio(of, v)} | {ratio(oa, v)} |")
print()

print("### Hot tail: 64 connections re-reading the last 1 MiB of an 8 MiB stream\n")
print("| server | MB/s | ours-memory / it | ours-file / it | ours-acid / it |")
print("|---|---:|---:|---:|---:|")
om, of, oa = (f(s, "tailread", "mbps") for s in ("ours-memory", "ours-file", "ours-acid"))
for s in SERVERS:
    v = f(s, "tailread", "mbps")
    if v is None:
        continue
    print(f"| {s} | {fmt(v)} | {ratio(om, v)} | {ratio(of, v)} | {ratio(oa, v)} |")
print()

print("### Spread appends vs 256 streams (same server, same run)\n")
print("| server | 256 streams req/s | spread req/s | spread / 256 | RSS after creating the streams KiB |")
print("|---|---:|---:|---:|---:|")
for s in SERVERS:
    a, b = f(s, "append256", "rps"), f(s, "append100k", "rps")
    if b is None:
        continue
    print(f"| {s} | {fmt(a)} | {fmt(b)} | {ratio(b, a)} | {rows[(s, 'append100k')].get('rss_after_create_kib', '—')} |")
print()


def subs(label, default):
    for (_, l), r in rows.items():
        if l == label and "subs" in r:
            return f"{int(r['subs']):,}"
    return default


def best_official(label):
    """The lower p99 from the writer's send of the official server's two modes."""
    vals = [f(s, label, "send_p99_ms") for s in ("peer-memory", "peer-wal")]
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else None


def send_cols(s, label):
    """From the writer's send: p50 / p99, and the p99 against the official server's best."""
    r = rows.get((s, label), {})
    best = best_official(label)
    p99 = f(s, label, "send_p99_ms")
    rel = f"{p99 / best:.2f}×" if p99 is not None and best else "—"
    return f"{r.get('send_p50_ms', '—')} / {r.get('send_p99_ms', '—')} | {rel}"


print("### Long-poll fan-out: 1 writer, " + subs("longpoll", "1,000") + " long-pollers, 100 appends 50 ms apart\n")
print("Delay = poller receipt − writer's ack; *from send*: − the writer's send (the official "
      "server's best p99 of its two modes is the *p99 / official* base). RSS per poller: while all wait.\n")
print("| server | delivered / expected | p50 ms | p99 ms | max ms | before ack | from send p50 / p99 ms | p99 / official | KiB per waiting poller | CPU µs per poll |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in SERVERS:
    r = rows.get((s, "longpoll"))
    if r and "error" in r:
        print(f"| {s} | failed: {r['error']} | — | — | — | — | — | — | — | — |")
    elif r:
        print(f"| {s} | {r.get('delivered')} / {r.get('expected')} | {r.get('p50_ms')} | {r.get('p99_ms')} | {r.get('max_ms')} | {r.get('before_ack')} | "
              f"{send_cols(s, 'longpoll')} | {r.get('rss_per_poller_kib', '—')} | {r.get('server_cpu_us_per_poll', '—')} |")
print()

print("### SSE fan-out: 1 writer, " + subs("fanout", "1,000") + " subscribers, 100 appends 50 ms apart\n")
print("Delay = subscriber receipt − writer's ack (0 when the event beat the ack; counted in *before ack*).\n")
print("| server | delivered / expected | p50 ms | p99 ms | max ms | before ack | from send p50 / p99 ms | p99 / official | RSS before KiB | RSS after KiB | KiB per idle subscriber | KiB per idle keep-alive conn | CPU µs per delivery |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in SERVERS:
    r = rows.get((s, "fanout"))
    idle = rows.get((s, "idle"), {}).get("rss_per_conn_kib", "—")
    if r and "error" in r:
        print(f"| {s} | failed: {r['error']} | — | — | — | — | — | — | — | — | — | {idle} | — |")
        continue
    if not r:
        if idle != "—":
            print(f"| {s} | — | — | — | — | — | — | — | — | — | — | {idle} | — |")
        continue
    print(f"| {s} | {r.get('delivered')} / {r.get('expected')} | {r.get('p50_ms')} | {r.get('p99_ms')} | {r.get('max_ms')} | "
          f"{r.get('before_ack')} | {send_cols(s, 'fanout')} | {r.get('rss_before_kib')} | {r.get('rss_after_kib')} | {r.get('rss_per_sub_kib')} | {idle} | "
          f"{r.get('server_cpu_us_per_delivery', '—')} |")
print()

count = next((r.get("count") for (_, l), r in rows.items() if l == "create"), "10000")
print(f"### Create {int(count):,} streams (64 connections), then restart after a graceful stop and after kill -9\n")
print("| server | creates/s | graceful stop ms | restart: listening ms | restart: first read ms | after kill -9: listening ms | after kill -9: first read ms | data KiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for s in SERVERS:
    c = rows.get((s, "create"))
    r = rows.get((s, "restart"), {})
    k = rows.get((s, "restart_kill"), {})
    if not c:
        continue
    if "error" in c:
        print(f"| {s} | failed: {c['error']} | — | — | — | — | — | — |")
        continue
    print(f"| {s} | {fmt(f(s, 'create', 'creates_per_s'))} | {r.get('stop_ms', '—')} | {r.get('listen_ms', '—')} | {r.get('restart_ms', '—')} | "
          f"{k.get('listen_ms', '—')} | {k.get('restart_ms', '—')} | {k.get('data_kib', r.get('data_kib', '—'))} |")
print()
