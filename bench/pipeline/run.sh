#!/usr/bin/env bash
# The stats pipeline's bench: user fetches per second through the whole pipeline (HTTP, parse,
# MySQL) on one core, the demo API in a separate process on the other core, MariaDB on
# 127.0.0.1:3306 (root, no password), `--latency-ms 0` and `20`; in the same run, the Python
# port of the gevent sample (bench/pipeline/sample_port.py: gevent + requests + PyMySQL, users
# one at a time per service, one INSERT + commit per row), installed into a local venv here.
#
#   bench/pipeline/run.sh            # ROUNDS=3 RUST_USERS=20000 PY_USERS=300 by default
#
# Method: for each latency, one API process per client size (the user list is the API's);
# rounds interleaved (Rust, Python, Rust, Python, ...), each on a fresh database; the medians
# are reported. "users/s" = user fetches (users × 3 services) / wall time of the crunch,
# user-list fetches and the final flush included. Writes bench/pipeline/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/stats-pipeline
HERE=bench/pipeline
VENV=$HERE/.venv
ROUNDS=${ROUNDS:-3}
RUST_USERS=${RUST_USERS:-20000}
PY_USERS=${PY_USERS:-300}
KEY=bench-key
DATE=2016-08-18
cargo build --release -q -p evergreen-services --bin stats-pipeline
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import gevent, requests, pymysql" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q gevent requests pymysql
fi
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start_api() { # users latency -> prints BASE_URL; the pid is appended to PIDS
  local out; out=$(mktemp)
  taskset -c 0 "$BIN" serve-api --port 0 --api-key "$KEY" --users "$1" --latency-ms "$2" >"$out" 2>/dev/null &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q BASE_URL= "$out" && break; sleep 0.1; done
  sed -n 's/.*BASE_URL=\(.*\))$/\1/p' "$out"
}
fresh_db() {
  mysql -h127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS $1; CREATE DATABASE $1"
  DATABASE_URL="mysql://root@127.0.0.1:3306/$1" "$BIN" migrate >/dev/null
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

{
echo "# Stats pipeline bench"
echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) cores; pipeline pinned to core 1, demo API to core 0)."
echo "MariaDB $(mysql -h127.0.0.1 -uroot -N -e 'SELECT VERSION()'), $(python3 --version), gevent $("$VENV/bin/python" -c 'import gevent; print(gevent.__version__)')."
echo "$ROUNDS interleaved rounds, medians; Rust: $RUST_USERS users × 3 services, concurrency 50 per service; Python sample: $PY_USERS users × 3 services."
echo
echo "| latency | evergreen stats-pipeline (users/s) | Python gevent sample (users/s) | ratio |"
echo "|---|---|---|---|"
} > $HERE/RESULTS.md.new

for LAT in 0 20; do
  RS_URL=$(start_api "$RUST_USERS" "$LAT")
  PY_URL=$(start_api "$PY_USERS" "$LAT")
  rs=(); py=()
  for r in $(seq "$ROUNDS"); do
    fresh_db evg_bench_rs
    t0=$(date +%s.%N)
    APIKEY=$KEY taskset -c 1 "$BIN" crunch --date $DATE --base-url "$RS_URL" \
      --database-url mysql://root@127.0.0.1:3306/evg_bench_rs >/dev/null 2>&1
    t1=$(date +%s.%N)
    rs+=("$(echo "$RUST_USERS * 3 / ($t1 - $t0)" | bc -l)")
    fresh_db evg_bench_py
    t0=$(date +%s.%N)
    taskset -c 1 "$VENV/bin/python" $HERE/sample_port.py "$PY_URL" $KEY evg_bench_py $DATE >/dev/null
    t1=$(date +%s.%N)
    py+=("$(echo "$PY_USERS * 3 / ($t1 - $t0)" | bc -l)")
    echo "latency $LAT round $r: rust ${rs[-1]} users/s, python ${py[-1]} users/s" >&2
  done
  R=$(printf '%s\n' "${rs[@]}" | median); P=$(printf '%s\n' "${py[@]}" | median)
  printf '| %s ms | %.0f | %.0f | %.0f× |\n' "$LAT" "$R" "$P" "$(echo "$R / $P" | bc -l)" >> $HERE/RESULTS.md.new
  kill "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
done
mysql -h127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS evg_bench_rs; DROP DATABASE IF EXISTS evg_bench_py"
mv $HERE/RESULTS.md.new $HERE/RESULTS.md
cat $HERE/RESULTS.md
