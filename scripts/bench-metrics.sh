#!/usr/bin/env bash
# Benchmark (not a test): the cost of a `/metrics` scrape with many
# instances. Goal: ≤ 5 ms per scrape with 50 instances.
#
# Starts a daemon on a data dir of its own (networking off), creates
# COUNT (default 50) instances that run `true` and stop (stopped
# instances have every per-instance series a running one has: state,
# log bytes, rotations, writer errors), waits until all are Stopped,
# then times RUNS (default 200) scrapes over one keep-alive connection
# with curl's own timer (time from request to the last byte, so no
# process start is counted) and prints the median, p95 and max, the
# daemon's CPU time per scrape (which, unlike wall time, a busy host does
# not inflate) and the size of the answer; GET /instances, which derives
# the same states, is timed the same way beside it.
#
# usage: scripts/bench-metrics.sh   (needs the guest: scripts/build-guest.sh)
#        LODGE_BIN=target/release/lodge scripts/bench-metrics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
count="${COUNT:-50}"
runs="${RUNS:-200}"
lodge="${LODGE_BIN:-$(./scripts/build-release.sh)}"
work="$(mktemp -d /tmp/lodge-bench-metrics.XXXXXX)"
export LODGE_NETWORK=off
export LODGE_OVERSUB_CPU=64
export LODGE_LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))"
export LODGE_BASE_URL="http://$LODGE_LISTEN"
export LODGE_DATA_DIR="$work/data"
"$lodge" serve >"$work/serve.log" 2>&1 &
daemon=$!
cleanup() {
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    # The instances have all stopped; their monitors are gone.
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do "$lodge" ps >/dev/null 2>&1 && break; sleep 0.1; done
token=$("$lodge" token)
rootfs="$LODGE_SYSTEM_DIR/rootfs-busybox"

echo "creating $count instances (each runs true and stops)..."
for i in $(seq "$count"); do
    "$lodge" run -d --name "m$i" --memory 128MB --cpus 1 --rootfs "$rootfs" true >/dev/null
    # At most 4 booting at once on a small host.
    while [ "$("$lodge" ps -q | wc -l)" -ge 4 ]; do sleep 0.2; done
done
while [ "$("$lodge" ps -q | wc -l)" -gt 0 ]; do sleep 0.2; done
echo "all $count Stopped: $("$lodge" ps -a --filter state=Stopped -q | wc -l)"

# time PATH: RUNS requests on one keep-alive connection, each timed by
# curl; prints "median p95 max" in ms.
time_path() {
    local args=()
    for _ in $(seq "$runs"); do
        args+=(-o /dev/null -w '%{time_total}\n' "$LODGE_BASE_URL$1")
    done
    curl -sf -H "Authorization: Bearer $token" "${args[@]}" |
        awk '{ print $1 * 1000 }' | sort -n >"$work/ms"
    local n50=$(( (50 * runs + 99) / 100 )) n95=$(( (95 * runs + 99) / 100 ))
    echo "$(sed -n "${n50}p" "$work/ms") $(sed -n "${n95}p" "$work/ms") $(tail -n 1 "$work/ms")"
}
bytes=$(curl -sf -H "Authorization: Bearer $token" "$LODGE_BASE_URL/metrics" | wc -c)
series=$(curl -sf -H "Authorization: Bearer $token" "$LODGE_BASE_URL/metrics" | grep -vc '^#')
# The daemon's CPU time (user + system, clock ticks) so far: per request
# it does not grow with other processes' load, as wall time does.
ticks() { awk '{ print $14 + $15 }' "/proc/$daemon/stat"; }
hz=$(getconf CLK_TCK)
cpu_ms() { awk -v a="$1" -v b="$2" -v hz="$hz" -v n="$runs" 'BEGIN { printf "%.3f", (b - a) * 1000 / hz / n }'; }
t0=$(ticks)
read -r m50 m95 mmax < <(time_path /metrics)
t1=$(ticks)
read -r l50 l95 lmax < <(time_path /instances)
t2=$(ticks)
echo "scrape with $count instances: $bytes bytes, $series samples; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "GET /metrics:   median $m50 ms, p95 $m95 ms, max $mmax ms over $runs; daemon CPU $(cpu_ms "$t0" "$t1") ms each (goal: median <= 5 ms)"
echo "GET /instances: median $l50 ms, p95 $l95 ms, max $lmax ms; daemon CPU $(cpu_ms "$t1" "$t2") ms each (the state derivation both share)"
