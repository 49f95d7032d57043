#!/usr/bin/env bash
# The whole benchmark suite (BENCHMARKS.md "RPC"): kms-server against the echo floor, audit
# variants, batch, data keys, latency at half load, key creation and 100,000 keys.
#
#   scripts/bench.sh [RUNS] [WINDOW_SECS] [KEYS]      (defaults: 3 3 100000)
#   WORKERS=N scripts/bench.sh                      (server threads, default 1: see below)
#
# About 4 minutes on 2 cores after the release build (which it does first). kms-server and
# the echo server run with TOKIO_WORKER_THREADS=$WORKERS (default 1): on a 2-core machine
# shared with the load generator, one server thread per spare core is what serves most
# (../shared/PERFORMANCE-NOTES.md); in production the default is one per core. Every case runs
# RUNS times, interleaved with its baseline, so the ratios compare measurements taken under
# the same machine conditions; the summary gives the median of the per-run figures.
# Results: target/bench/<time>/*.jsonl (one kms-bench --json object per line) and summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
WINDOW=${2:-3}
KEYS=${3:-100000}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release
OUT=$TARGET/bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
cargo build --release -q -p kms-server -p kms-bench -p kms-cli
export TOKIO_WORKER_THREADS=${WORKERS:-1}
{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "cpus: $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "server threads: $TOKIO_WORKER_THREADS; runs: $RUNS; window: ${WINDOW}s"
} >"$OUT/machine.txt"

SERVER_PID=
ECHO_PID=
COLLECTOR_PID=
cleanup() {
    for p in $SERVER_PID $ECHO_PID $COLLECTOR_PID; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# wait_for FILE PREFIX: prints what follows PREFIX on the first line of FILE that has it.
wait_for() {
    for _ in $(seq 1 600); do
        if line=$(grep -m1 "^$2" "$1" 2>/dev/null); then
            echo "${line#"$2"}" | cut -d' ' -f1
            return
        fi
        sleep 0.05
    done
    echo "timed out waiting for '$2' in $1" >&2
    cat "$1" >&2
    exit 1
}

# start_dev DIR [kms-server dev flags]: starts a dev server, exports its env (KMS_ADDR...).
start_dev() {
    local dir=$1
    shift
    "$BIN/kms-server" dev --data-dir "$dir" --listen 127.0.0.1:0 "$@" >"$dir.out" 2>"$dir.err" &
    SERVER_PID=$!
    wait_for "$dir.out" "kms-server listening on " >/dev/null
    # shellcheck disable=SC1091
    . "$dir/env"
}

stop_dev() {
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=
}

# bench NAME PID [kms-bench run flags]: one measured window, appended to NAME.jsonl.
bench() {
    local name=$1 pid=$2
    shift 2
    "$BIN/kms-bench" run --json --duration "$WINDOW" --warmup 1 --server-pid "$pid" "$@" \
        >>"$OUT/$name.jsonl"
}

DEV=$OUT/dev
mkdir -p "$DEV"
start_dev "$DEV"
"$BIN/kms-bench" echo-server --tls-dir "$DEV/tls" --listen 127.0.0.1:0 >"$OUT/echo.out" 2>&1 &
ECHO_PID=$!
ECHO_ADDR=https://$(wait_for "$OUT/echo.out" "kms-bench echo-server listening on ")
stop_dev

echo "== transport floor vs kms: $RUNS runs of ${WINDOW}s windows"
for run in $(seq 1 "$RUNS"); do
    start_dev "$DEV"
    for shape in "16 1" "64 4"; do
        set -- $shape
        tag=c$1x$2
        bench "echo-$tag" "$ECHO_PID" --op echo --addr "$ECHO_ADDR" --concurrency "$1" --connections "$2"
        bench "encrypt-$tag" "$SERVER_PID" --op encrypt --concurrency "$1" --connections "$2"
        bench "decrypt-$tag" "$SERVER_PID" --op decrypt --concurrency "$1" --connections "$2"
    done
    bench generate-data-key-c16x1 "$SERVER_PID" --op generate-data-key --concurrency 16
    bench batch-encrypt-1000 "$SERVER_PID" --op batch-encrypt --batch 1000 --concurrency 2
    stop_dev
    echo "   run $run done"
done

echo "== audit variants: default, off (dev --no-audit), fsync every request, shipped"
"$BIN/kms-bench" collector --tls-dir "$DEV/tls" --listen 127.0.0.1:0 >"$OUT/collector.out" 2>&1 &
COLLECTOR_PID=$!
COLLECTOR_ADDR=$(wait_for "$OUT/collector.out" "kms-bench collector listening on ")
for run in $(seq 1 "$RUNS"); do
    for variant in on off every-request shipped; do
        case $variant in
            on) flags=() ;;
            off) flags=(--no-audit) ;;
            every-request) flags=(--audit-sync every-request) ;;
            shipped) flags=(--ship-to "$COLLECTOR_ADDR") ;;
        esac
        # A fresh installation (same certificates) each time, so every variant starts with
        # an empty log and the shipper has no backlog to catch up on.
        V=$OUT/variant
        rm -rf "$V" && mkdir -p "$V" && cp -r "$DEV/tls" "$V/tls"
        start_dev "$V" "${flags[@]}"
        bench "audit-$variant" "$SERVER_PID" --op encrypt --concurrency 16
        stop_dev
    done
    echo "   run $run done"
done

echo "== p99 at half of peak: echo and encrypt at half their c16 median rate"
half() { python3 -c 'import json,statistics,sys; print(int(statistics.median(json.loads(l)["ops_per_s"] for l in open(sys.argv[1]))/2))' "$1"; }
ECHO_HALF=$(half "$OUT/echo-c16x1.jsonl")
ENC_HALF=$(half "$OUT/encrypt-c16x1.jsonl")
start_dev "$DEV"
for run in $(seq 1 "$RUNS"); do
    bench echo-half "$ECHO_PID" --op echo --addr "$ECHO_ADDR" --concurrency 16 --rate "$ECHO_HALF"
    bench encrypt-half "$SERVER_PID" --op encrypt --concurrency 16 --rate "$ENC_HALF"
done

echo "== key creation (durable) and $KEYS keys"
"$BIN/kms-bench" run --json --op create-key --key created --count 2000 --concurrency 32 \
    --warmup 0 --server-pid "$SERVER_PID" >>"$OUT/create-key.jsonl"
BIG=$OUT/big
mkdir -p "$BIG"
stop_dev
start_dev "$BIG"
"$BIN/kms-bench" run --json --op create-key --key many --count "$KEYS" --concurrency 64 \
    --warmup 0 --server-pid "$SERVER_PID" >>"$OUT/create-many.jsonl"
"$BIN/kms-cli" key create probe >/dev/null
stop_dev
# Startup + unseal + key load: from process start to the first successful Encrypt.
for run in $(seq 1 "$RUNS"); do
    t0=$(date +%s.%N)
    start_dev "$BIG"
    until echo -n x | "$BIN/kms-cli" encrypt --key probe >/dev/null 2>&1; do sleep 0.01; done
    t1=$(date +%s.%N)
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
    echo "{\"startup_s\": $(echo "$t1 - $t0" | bc), \"rss_kib\": $rss, \"keys\": $KEYS}" >>"$OUT/startup.jsonl"
    stop_dev
done

echo "== in-process crypto for the batch ratio (criterion)"
cargo bench -q -p kms-core --bench crypto -- "seal batch" >"$OUT/criterion-batch.txt" 2>&1 || true

python3 scripts/bench_summary.py "$OUT" | tee "$OUT/summary.md"
