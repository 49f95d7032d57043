#!/usr/bin/env bash
# Several kms-server nodes on PostgreSQL against one node on sled (BENCHMARKS.md "Several
# nodes on PostgreSQL").
#
#   scripts/bench-cluster.sh [RUNS] [WINDOW_SECS] [CONCURRENCY]     (defaults: 3 5 24)
#   WORKERS=N scripts/bench-cluster.sh       (tokio worker threads per node, default 1)
#   NO_BUILD=1 scripts/bench-cluster.sh      (use the release binaries as they are: in a
#                                             checkout others are editing, the build would
#                                             pick up their work in progress)
#
# Three configurations, each on a fresh installation (new sled folder or new database),
# initialised with one share and unsealed with kms-cli as an operator would:
#   sled      1 node on sled (the baseline),
#   pg1       1 node on PostgreSQL,
#   pg3       3 nodes on one PostgreSQL database, one kms-bench per node at the same time,
#             CONCURRENCY/3 in flight each over one connection (the baselines get
#             CONCURRENCY in flight over 3 connections: same load, same connection count).
# For each: `kms-bench run --op encrypt` (64 B) then `--op create-key` (durable writes).
# The three configurations run RUNS times, interleaved (the order rotates every run), so
# the ratios compare measurements taken under the same machine conditions; ratios are
# computed per run against that run's sled figure, then medianed.
#
# PostgreSQL is a private instance (initdb in a temp dir, 127.0.0.1, a free port, trust
# authentication, fsync and synchronous_commit on), run as the `postgres` OS user when we are
# root (PostgreSQL refuses root). TLS certificates and policies come from one throwaway
# `kms-server dev` run. Every process and temp dir is removed on exit (trap).
# Results: target/bench-cluster/<time>/ (raw kms-bench JSON per node and run, summary.md).
# About 3 minutes after the release build on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
WINDOW=${2:-5}
CONC=${3:-24}
WARMUP=1
NODES=3
if ((CONC % NODES != 0)); then
    echo "CONCURRENCY ($CONC) must be a multiple of $NODES: it is split evenly over the nodes" >&2
    exit 2
fi
TARGET=${CARGO_TARGET_DIR:-target}
if [[ -z ${NO_BUILD:-} ]]; then
    cargo build --release -q -p kms-server -p kms-bench -p kms-cli
fi
OUT=$(realpath -m "$TARGET")/bench-cluster/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT/raw"
BIN=$(realpath "$TARGET/release")
export TOKIO_WORKER_THREADS=${WORKERS:-1}

PG_BIN=$(pg_config --bindir 2>/dev/null || true)
if [[ -z $PG_BIN || ! -x $PG_BIN/postgres ]]; then
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
fi
if [[ -z $PG_BIN || ! -x $PG_BIN/postgres ]]; then
    echo "PostgreSQL is not installed: apt-get install -y postgresql" >&2
    exit 2
fi
# PostgreSQL refuses to run as root: run its programs as the `postgres` OS user then.
if [[ $(id -u) == 0 ]]; then
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

# The temp dirs: WORK (nodes, certificates, policies) and PGDIR (the cluster, owned by the
# postgres user; directly under /tmp so that user can reach it).
WORK=$(mktemp -d /tmp/kms-bench-cluster.XXXXXX)
PGDIR=$(mktemp -d /tmp/kms-bench-pg.XXXXXX)
PG_STARTED=
NODE_PIDS=()
BENCH_PIDS=()
cleanup() {
    local p
    for p in "${BENCH_PIDS[@]}" "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${BENCH_PIDS[@]}" "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n $PG_STARTED ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PGDIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK" "$PGDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{
    echo "date: $(date -u +%FT%TZ)"
    [[ -n ${NO_BUILD:-} ]] && echo "NO_BUILD: binaries as found, kms-server built $(date -u -r "$BIN/kms-server" +%FT%TZ); the commit below is the checkout's now"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes in the checkout)')"
    git diff --quiet HEAD -- kms-server kms-core kms-client kms-bench kms-cli proto 2>/dev/null ||
        echo "uncommitted in the built crates: $(git diff --name-only HEAD -- kms-server kms-core kms-client kms-bench kms-cli proto | tr '\n' ' ')"
    echo "cpus: $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "postgres: $("$PG_BIN/postgres" --version)"
    echo "node threads: $TOKIO_WORKER_THREADS; runs: $RUNS; window: ${WINDOW}s after ${WARMUP}s warm-up; in flight: $CONC"
} >"$OUT/machine.txt"
cat "$OUT/machine.txt"

# wait_for FILE PREFIX: prints the word after PREFIX on the first line of FILE that has it.
wait_for() {
    local line
    for _ in $(seq 1 600); do
        if line=$(grep -m1 "^$2" "$1" 2>/dev/null); then
            line=${line#"$2"}
            echo "${line%% *}"
            return
        fi
        sleep 0.05
    done
    echo "timed out waiting for '$2' in $1:" >&2
    cat "$1" >&2
    exit 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- certificates and policies: one throwaway dev server writes them ----------------------
"$BIN/kms-server" dev --data-dir "$WORK/dev" --listen 127.0.0.1:0 >"$WORK/dev.out" 2>&1 &
NODE_PIDS=($!)
wait_for "$WORK/dev.out" "kms-server listening on " >/dev/null
kill -TERM "${NODE_PIDS[0]}"
wait "${NODE_PIDS[0]}" || true
NODE_PIDS=()
TLS=$WORK/dev/tls
POLICIES=$WORK/dev/policies
export KMS_CA_CERT=$TLS/ca.pem KMS_CLIENT_CERT=$TLS/client.pem KMS_CLIENT_KEY=$TLS/client-key.pem

# --- PostgreSQL -----------------------------------------------------------------------------
chown postgres: "$PGDIR" 2>/dev/null || true
as_pg "$PG_BIN/initdb" -D "$PGDIR/data" --auth=trust -U postgres -E UTF8 --locale=C >"$OUT/initdb.log"
PG_PORT=$(free_port)
as_pg "$PG_BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/postgres.log" -w -t 60 start \
    -o "-p $PG_PORT -k $PGDIR -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on" >/dev/null
PG_STARTED=1
psql_do() {
    PGOPTIONS="-c client_min_messages=warning" "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "$1"
}
# A new empty database `kms` (ICU en-US collation, as the tests use).
fresh_database() {
    psql_do "DROP DATABASE IF EXISTS kms WITH (FORCE)"
    psql_do "CREATE DATABASE kms TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    psql_do "CHECKPOINT"
}
echo "postgres: $PG_BIN on 127.0.0.1:$PG_PORT"

# CPU ticks (utime + stime) used so far by the postmaster and its live children; children
# that exited are in the postmaster's cutime + cstime.
pg_ticks() {
    local pm t=0 p line rest
    pm=$(head -1 "$PGDIR/data/postmaster.pid")
    for p in "$pm" $(pgrep -P "$pm"); do
        { read -r line <"/proc/$p/stat"; } 2>/dev/null || continue
        rest=${line##*) }
        # shellcheck disable=SC2086
        set -- $rest
        t=$((t + ${12} + ${13} + ${14} + ${15}))
    done
    echo "$t"
}
CLK_TCK=$(getconf CLK_TCK)

# --- nodes ----------------------------------------------------------------------------------
# write_config DIR STORAGE_TOML NODE_NAME
write_config() {
    mkdir -p "$1"
    cat >"$1/config.toml" <<EOF
listen = "127.0.0.1:0"
policies = "$POLICIES"
[tls]
cert = "$TLS/server.pem"
key = "$TLS/server-key.pem"
client_ca = "$TLS/ca.pem"
$2
[audit]
path = "audit.log"
node = "$3"
EOF
}

# start_node DIR: starts a node (sealed); appends its pid to NODE_PIDS, its URL to NODE_ADDRS.
start_node() {
    "$BIN/kms-server" --config "$1/config.toml" >"$1/server.log" 2>&1 &
    NODE_PIDS+=($!)
    NODE_ADDRS+=("https://$(wait_for "$1/server.log" "kms-server listening on ")")
}

stop_nodes() {
    local p
    for p in "${NODE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${NODE_PIDS[@]}"; do wait "$p" || true; done
    NODE_PIDS=()
    NODE_ADDRS=()
}

# init_unseal: `operator init` (1 share of 1) on the first node, `operator unseal` on each.
# The share goes through a private file, never through a command line.
init_unseal() {
    local share=$WORK/share addr
    (umask 077 && KMS_ADDR=${NODE_ADDRS[0]} "$BIN/kms-cli" --format json operator init --shares 1 --threshold 1 |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["shares"][0])' >"$share")
    for addr in "${NODE_ADDRS[@]}"; do
        KMS_ADDR=$addr "$BIN/kms-cli" operator unseal --share-file "$share" >/dev/null
    done
    rm -f "$share"
    KMS_ADDR=${NODE_ADDRS[0]} "$BIN/kms-cli" key create bench >/dev/null
}

# measure RUN CONFIG OP: one window of OP through every started node at once,
# CONC/number-of-nodes in flight per node; one JSON file per node, and PostgreSQL's CPU.
# Encrypt uses the one key `bench` on every node; create-key names its keys ck-nI-...
measure() {
    local run=$1 cfg=$2 op=$3 n=${#NODE_ADDRS[@]} i t0 t1 rc key
    local per=$((CONC / n)) conns=$((n == 1 ? NODES : 1))
    BENCH_PIDS=()
    for i in $(seq 0 $((n - 1))); do
        key=$([[ $op == create-key ]] && echo "ck-n$i" || echo bench)
        KMS_ADDR=${NODE_ADDRS[$i]} "$BIN/kms-bench" run --json --op "$op" --key "$key" \
            --concurrency "$per" --connections "$conns" --warmup "$WARMUP" --duration "$WINDOW" \
            --server-pid "${NODE_PIDS[$i]}" >"$OUT/raw/r$run-$cfg-$op-n$i.json" 2>"$OUT/raw/r$run-$cfg-$op-n$i.err" &
        BENCH_PIDS+=($!)
    done
    # PostgreSQL's CPU over (about) the measured window: after the warm-up, for WINDOW s.
    sleep "$WARMUP"
    t0=$(pg_ticks)
    sleep "$WINDOW"
    t1=$(pg_ticks)
    for i in "${!BENCH_PIDS[@]}"; do
        rc=0
        wait "${BENCH_PIDS[$i]}" || rc=$?
        # 1: some requests failed (counted in the report); 2: nothing was measured.
        if ((rc >= 2)); then
            echo "kms-bench failed on node $i ($cfg, $op, run $run):" >&2
            cat "$OUT/raw/r$run-$cfg-$op-n$i.err" >&2
            exit 1
        fi
    done
    BENCH_PIDS=()
    echo "{\"pg_cpu_s\": $(python3 -c "print(($t1 - $t0) / $CLK_TCK)")}" >"$OUT/raw/r$run-$cfg-$op-pg.json"
}

# run_config RUN CONFIG: a fresh installation of CONFIG, init + unseal, both measurements.
run_config() {
    local run=$1 cfg=$2 dir=$WORK/r$1-$2 i count storage
    NODE_ADDRS=()
    case $cfg in
        sled)
            count=1
            storage=$'[storage]\nbackend = "sled"\npath = "data"'
            ;;
        pg1 | pg3)
            count=$([[ $cfg == pg1 ]] && echo 1 || echo "$NODES")
            fresh_database
            storage=$'[storage]\nbackend = "postgres"\n'"url = \"host=127.0.0.1 port=$PG_PORT user=postgres dbname=kms\""$'\ntls = "disable"'
            ;;
    esac
    for i in $(seq 0 $((count - 1))); do
        write_config "$dir/node-$i" "$storage" "kms-$i"
        start_node "$dir/node-$i"
    done
    init_unseal
    measure "$run" "$cfg" encrypt
    measure "$run" "$cfg" create-key
    stop_nodes
    # The end of each node's log, for the errors a window may show (full logs are big).
    for i in $(seq 0 $((count - 1))); do
        tail -n 50 "$dir/node-$i/server.log" >"$OUT/raw/r$run-$cfg-node-$i.log"
    done
    rm -rf "$dir"
}

CONFIGS=(sled pg1 pg3)
for run in $(seq 1 "$RUNS"); do
    # Rotate the order every run, so no configuration always follows the same one.
    for k in 0 1 2; do
        cfg=${CONFIGS[$(((run - 1 + k) % 3))]}
        run_config "$run" "$cfg"
        echo "   run $run: $cfg done"
    done
done
cp "$PGDIR/postgres.log" "$OUT/postgres.log"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

python3 - "$OUT" "$RUNS" <<'PY' | tee "$OUT/summary.md"
"""Medians over runs; ratios to sled per run, then medianed."""
import glob
import json
import os
import statistics
import sys

out, runs = sys.argv[1], int(sys.argv[2])
med = statistics.median
NAMES = {
    "sled": "(a) 1 node, sled",
    "pg1": "(b) 1 node, PostgreSQL",
    "pg3": "(c) 3 nodes, PostgreSQL",
}


def one(run, cfg, op):
    """Throughput summed over the nodes, p50 (median of the nodes' p50) and p99 (highest
    node p99), server CPU per op over all nodes, PostgreSQL CPU per op, errors."""
    nodes = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/raw/r{run}-{cfg}-{op}-n*.json"))]
    pg = json.load(open(f"{out}/raw/r{run}-{cfg}-{op}-pg.json"))["pg_cpu_s"]
    ok = sum(n["ok"] for n in nodes)
    return {
        "ops": sum(n["ops_per_s"] for n in nodes),
        "p50": med(n["latency_us"]["p50"] for n in nodes),
        "p99": max(n["latency_us"]["p99"] for n in nodes),
        "kms_cpu": sum(n["server"]["cpu_s"] for n in nodes) / ok * 1e6 if ok else float("nan"),
        # Sampled by the script over WINDOW s after the warm-up: about the measured window.
        "pg_cpu": pg / ok * 1e6 if ok and cfg != "sled" else None,
        "errors": sum(n["failed_requests"] for n in nodes),
        "first_error": next((n["first_error"] for n in nodes if n["first_error"]), None),
        "nodes": len(nodes),
    }


print("```\n" + open(os.path.join(out, "machine.txt")).read().strip() + "\n```\n")
for op, unit in (("encrypt", "req/s"), ("create-key", "keys/s")):
    print(f"**{op}** (medians of {runs} runs; ratios per run against (a), then medianed)\n")
    print(f"| configuration | {unit} | p50 µs | p99 µs | kms-server CPU µs/op | PostgreSQL CPU µs/op | errors | {unit} / (a) | p99 / (a) |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {r: one(r, "sled", op) for r in range(1, runs + 1)}
    for cfg in ("sled", "pg1", "pg3"):
        rows = [one(r, cfg, op) for r in range(1, runs + 1)]
        thr = [x["ops"] / base[r]["ops"] for r, x in zip(range(1, runs + 1), rows)]
        lat = [x["p99"] / base[r]["p99"] for r, x in zip(range(1, runs + 1), rows)]
        pg = [x["pg_cpu"] for x in rows if x["pg_cpu"] is not None]
        cells = [
            NAMES[cfg],
            f"{med(x['ops'] for x in rows):,.0f}",
            f"{med(x['p50'] for x in rows):,.0f}",
            f"{med(x['p99'] for x in rows):,.0f}",
            f"{med(x['kms_cpu'] for x in rows):.1f}",
            f"{med(pg):.1f}" if pg else "",
            str(sum(x["errors"] for x in rows)),
            "1.00" if cfg == "sled" else f"{med(thr):.2f} (runs: {', '.join(f'{v:.2f}' for v in thr)})",
            "1.00" if cfg == "sled" else f"{med(lat):.2f} (runs: {', '.join(f'{v:.2f}' for v in lat)})",
        ]
        print("| " + " | ".join(cells) + " |")
        for x in rows:
            if x["first_error"]:
                print(f"\nfirst error ({cfg}): {x['first_error']}")
                break
    print()
    print("per run, " + op + ": " + "; ".join(
        f"run {r}: " + ", ".join(
            f"{cfg} {one(r, cfg, op)['ops']:,.0f}/s p99 {one(r, cfg, op)['p99']:,.0f}" for cfg in ("sled", "pg1", "pg3"))
        for r in range(1, runs + 1)))
    print()
PY
echo "results: $OUT"
