#!/usr/bin/env bash
# A/B of Encrypt throughput between two kms-server binaries, interleaved in one run (the
# order alternates every pair), each on a fresh `kms-server dev` data dir:
#   scripts/ab-encrypt.sh OLD_KMS_SERVER NEW_KMS_SERVER KMS_BENCH [PAIRS=6]
# Prints ops/s and p99 per run; compare per-pair ratios and medians (BENCHMARKS.md).
set -u
old=$1 new=$2 bench=$3 pairs=${4:-6}
run_one() {
  local bin=$1 tag=$2 i=$3 d pid
  d=$(mktemp -d)
  "$bin" dev --data-dir "$d" --listen 127.0.0.1:0 >"$d/out" 2>"$d/err" &
  pid=$!
  for _ in $(seq 100); do grep -qs KMS_ADDR "$d/env" && break; sleep 0.1; done
  sleep 0.5
  (set -a; . "$d/env"; set +a
   "$bench" run --op encrypt --duration 5 --warmup 1 --concurrency 16 --json >"$d/bench.json" 2>"$d/bench.err")
  python3 - "$tag" "$i" "$d/bench.json" <<'PY'
import json, sys
tag, i, path = sys.argv[1:]
try:
    r = json.load(open(path))
    print(f"{tag} run{i} ops_per_s={round(r['ops_per_s'])} p99_us={round(r['latency_us']['p99'])}")
except Exception as e:
    print(f"{tag} run{i} failed: {e}")
PY
  kill "$pid"; wait "$pid" 2>/dev/null; rm -rf "$d"
}
for i in $(seq "$pairs"); do
  if [ $((i % 2)) -eq 1 ]; then run_one "$old" old "$i"; run_one "$new" new "$i"
  else run_one "$new" new "$i"; run_one "$old" old "$i"; fi
done
