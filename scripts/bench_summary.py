#!/usr/bin/env python3
"""Summarises a scripts/bench.sh result directory as markdown: medians of the runs, and
ratios computed per run (against the baseline measured next to it) then medianed."""
import json
import os
import statistics
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name + ".jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def ops(r):
    return r.get("items_per_s") or r["ops_per_s"]


def cpu(r):
    s = r.get("server") or {}
    return s.get("cpu_us_per_item") or s.get("cpu_us_per_op")


def errors(rows):
    return sum(r.get("failed_requests", 0) + r.get("failed_items", 0) for r in rows)


machine = os.path.join(out, "machine.txt")
if os.path.exists(machine):
    print("```\n" + open(machine).read().strip() + "\n```\n")
print(f"Results in `{out}`; each figure is the median of {len(load('echo-c16x1'))} runs.\n")
print("| case | ops/s (items/s) | p50 µs | p99 µs | server CPU µs/op | errors | ratio to baseline (median of per-run ratios) |")
print("|---|---|---|---|---|---|---|")


def row(name, base=None, label=None):
    rows = load(name)
    if not rows:
        return
    ratio = ""
    if base:
        brows = load(base)
        ratios = [ops(a) / ops(b) for a, b in zip(rows, brows)]
        if ratios:
            ratio = f"{med(ratios):.2f} of {base} (runs: {', '.join(f'{x:.2f}' for x in ratios)})"
    print(
        f"| {label or name} | {med([ops(r) for r in rows]):,.0f} | "
        f"{med([r['latency_us']['p50'] for r in rows]):,.0f} | "
        f"{med([r['latency_us']['p99'] for r in rows]):,.0f} | "
        f"{med([cpu(r) for r in rows]):.1f} | {errors(rows)} | {ratio} |"
    )


for shape in ("c16x1", "c64x4"):
    row(f"echo-{shape}")
    row(f"encrypt-{shape}", f"echo-{shape}")
    row(f"decrypt-{shape}", f"echo-{shape}")
row("generate-data-key-c16x1", "echo-c16x1")
row("batch-encrypt-1000")
row("audit-on")
row("audit-off")
row("audit-on", "audit-off", "audit on / off")
row("audit-every-request", "audit-off", "audit fsync every request / off")
row("audit-shipped", "audit-off", "audit shipped / off")
row("echo-half")
row("encrypt-half")
eh, kh = load("echo-half"), load("encrypt-half")
if eh and kh:
    rs = [k["latency_us"]["p99"] / e["latency_us"]["p99"] for e, k in zip(eh, kh)]
    print(f"\np99 at half of peak, encrypt / echo: {med(rs):.2f} (runs: {', '.join(f'{x:.2f}' for x in rs)})")
for name in ("create-key", "create-many"):
    rows = load(name)
    if rows:
        print(f"\n{name}: {med([r['ops_per_s'] for r in rows]):,.0f} keys/s (durable), "
              f"p99 {med([r['latency_us']['p99'] for r in rows]):,.0f} µs, errors {errors(rows)}")
st = load("startup")
if st:
    print(f"\n{st[0]['keys']:,} keys: start + unseal + load until the first Encrypt: "
          f"{med([r['startup_s'] for r in st]):.2f} s (runs: {', '.join('%.2f' % r['startup_s'] for r in st)}); "
          f"RSS {med([r['rss_kib'] for r in st]) / 1024:.0f} MiB")

crit = os.path.join(out, "criterion-batch.txt")
batch = load("batch-encrypt-1000")
if os.path.exists(crit) and batch:
    import re
    text = open(crit).read()
    m = re.search(r"thrpt:\s*\[\s*[\d.]+ \w+/s\s+([\d.]+) (\w)?elem/s", text)
    if m:
        scale = {"K": 1e3, "M": 1e6, "G": 1e9, None: 1}[m.group(2)]
        inproc = float(m.group(1)) * scale
        rpc = med([ops(r) for r in batch])
        print(f"\nBatch encrypt over RPC (B = 1000, 64 B): {rpc:,.0f} items/s; in-process seal (criterion, "
              f"one thread): {inproc:,.0f} items/s; ratio {rpc / inproc:.2f}")
