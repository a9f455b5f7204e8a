#!/usr/bin/env bash
# Benchmark (not a test): the cost of a `/metrics` scrape with many
# instances. Goal: <= 5 ms per scrape with 50 instances.
#
# Starts a daemon on a data dir of its own (networking off), creates
# COUNT (default 50) instances that run `true` and stop (stopped
# instances have every per-instance series a running one has: state,
# log bytes, rotations, writer errors), waits until all are Stopped,
# then times RUNS (default 200) scrapes over one keep-alive connection
# with curl's own timer (time from request to the last byte, so no
# process start is counted) and prints the median, p90, p95 and max, the
# daemon's CPU time per scrape (which, unlike wall time, a busy host does
# not inflate; from the threads' schedstat in ns, see cpu_ns) and the
# size of the answer; GET /instances, which derives the same states, is
# timed the same way beside it.
#
# With RUNNING=1 the instances run `sleep 600` instead (all started at
# once, measured once all are Running; deleted at the end): a boot
# storm's instances, e.g. COUNT=10 RUNNING=1 for the daemon's CPU per
# scrape during one (scripts/bench-boot-storm.sh).
#
# With BEFORE_BIN set, a second daemon of that binary serves the same
# data dir on another port (neither daemon changes the instances while
# they are measured) and the two are measured in turn, BLOCKS times each
# (default 5, alternating which goes first), so host load hits both
# alike; the answers of both are compared line by line first (counters
# of the daemon's own events aside).
#
# usage: scripts/bench-metrics.sh   (needs the guest: scripts/build-guest.sh)
#        LODGE_BIN=target/release/lodge scripts/bench-metrics.sh
#        BEFORE_BIN=/tmp/lodge-main LODGE_BIN=target/static/.../lodge scripts/bench-metrics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
count="${COUNT:-50}"
runs="${RUNS:-200}"
running="${RUNNING:-0}"
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
    if [ "$running" = 1 ]; then
        # Running VMs outlive the daemon: delete them through it first.
        "$lodge" ps -aq | xargs -r "$lodge" rm -f >/dev/null 2>&1 || true
    fi
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do "$lodge" ps >/dev/null 2>&1 && break; sleep 0.1; done
token=$("$lodge" token)
rootfs="$LODGE_SYSTEM_DIR/rootfs-busybox"

if [ "$running" = 1 ]; then
    echo "creating $count instances (each runs sleep 600)..."
    for i in $(seq "$count"); do
        "$lodge" run -d --name "m$i" --memory 128MB --cpus 1 --rootfs "$rootfs" sleep 600 >/dev/null
    done
    while [ "$("$lodge" ps --filter state=Running -q | wc -l)" -lt "$count" ]; do sleep 0.5; done
    echo "all $count Running"
else
    echo "creating $count instances (each runs true and stops)..."
    for i in $(seq "$count"); do
        "$lodge" run -d --name "m$i" --memory 128MB --cpus 1 --rootfs "$rootfs" true >/dev/null
        # At most 4 booting at once on a small host.
        while [ "$("$lodge" ps -q | wc -l)" -ge 4 ]; do sleep 0.2; done
    done
    while [ "$("$lodge" ps -q | wc -l)" -gt 0 ]; do sleep 0.2; done
    echo "all $count Stopped: $("$lodge" ps -a --filter state=Stopped -q | wc -l)"
fi

before="${BEFORE_BIN:-}"
blocks="${BLOCKS:-5}"
declare -A pid url
pid[after]=$daemon
url[after]=$LODGE_BASE_URL
sides=(after)
if [ -n "$before" ]; then
    listen="127.0.0.1:$((20000 + RANDOM % 20000))"
    LODGE_LISTEN="$listen" "$before" serve >"$work/serve-before.log" 2>&1 &
    pid[before]=$!
    url[before]="http://$listen"
    for _ in $(seq 100); do curl -sf "${url[before]}/health" >/dev/null && break; sleep 0.1; done
    sides=(before after)
    cleanup_before() { kill "${pid[before]}" 2>/dev/null || true; wait "${pid[before]}" 2>/dev/null || true; cleanup; }
    trap cleanup_before EXIT
fi

# The daemon's CPU time so far in ns: the sum of its threads' run time
# (/proc/PID/task/*/schedstat), not /proc/PID/stat's 10 ms clock ticks.
# A thread that ends within a block takes its time with it: the blocking
# threads the creates used end 10 s after their last job, so the blocks
# start only once they have (below), and the clock ticks are printed
# beside as a check.
# (%.0f: mawk's %d stops at 2^31, 2.1 s.)
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }'; }
# The same from /proc/PID/stat (user + system, clock ticks), as a check.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# time SIDE PATH: RUNS requests on one keep-alive connection, each timed
# by curl; appends the ms to $work/SIDE.PATH.ms and the daemon CPU ns to
# $work/SIDE.PATH.cpu.
time_path() {
    local side=$1 path=$2 args=() c0 c1 key
    key="$side.$(echo "$path" | tr -d /)"
    for _ in $(seq "$runs"); do
        args+=(-o /dev/null -w '%{time_total}\n' "${url[$side]}$path")
    done
    c0=$(cpu_ns "${pid[$side]}")
    k0=$(ticks "${pid[$side]}")
    curl -sf -H "Authorization: Bearer $token" "${args[@]}" | awk '{ print $1 * 1000 }' >>"$work/$key.ms"
    c1=$(cpu_ns "${pid[$side]}")
    k1=$(ticks "${pid[$side]}")
    echo "$((c1 - c0)) $((k1 - k0))" >>"$work/$key.cpu"
}
# summary SIDE PATH: "p50 p90 p95 max cpu_ms_per_request"
summary() {
    local key="$1.$(echo "$2" | tr -d /)" n
    sort -n "$work/$key.ms" >"$work/$key.sorted"
    n=$(wc -l <"$work/$key.sorted")
    echo "$(sed -n "$(((50 * n + 99) / 100))p" "$work/$key.sorted") $(sed -n "$(((90 * n + 99) / 100))p" "$work/$key.sorted") \
$(sed -n "$(((95 * n + 99) / 100))p" "$work/$key.sorted") $(tail -n 1 "$work/$key.sorted") \
$(awk -v n="$n" -v hz="$hz" '{ s += $1; k += $2 } END { printf "%.3f %.3f", s / 1e6 / n, k * 1000 / hz / n }' "$work/$key.cpu")"
}
for side in "${sides[@]}"; do
    # Warm: the first scrape of a daemon reads everything.
    curl -sf -H "Authorization: Bearer $token" "${url[$side]}/metrics" >/dev/null
done
# tokio ends an idle blocking thread after 10 s (see cpu_ns).
sleep 11
if [ -n "$before" ]; then
    for side in before after; do
        curl -sf -H "Authorization: Bearer $token" "${url[$side]}/metrics" |
            grep -v -e '^lodge_http_request' -e '^lodge_daemon_resident' -e '^lodge_boots_total' >"$work/$side.prom"
    done
    if diff "$work/before.prom" "$work/after.prom" >"$work/prom.diff"; then
        echo "answers: the same ($(wc -l <"$work/after.prom") lines, the daemon's own event counters and RSS aside)"
    else
        echo "answers differ:"; head -n 20 "$work/prom.diff"
    fi
fi
bytes=$(curl -sf -H "Authorization: Bearer $token" "$LODGE_BASE_URL/metrics" | wc -c)
series=$(curl -sf -H "Authorization: Bearer $token" "$LODGE_BASE_URL/metrics" | grep -vc '^#')
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for b in $(seq "$blocks"); do
    if [ $((b % 2)) = 1 ]; then order=("${sides[@]}"); else order=($(printf '%s\n' "${sides[@]}" | tac)); fi
    for side in "${order[@]}"; do
        time_path "$side" /metrics
        time_path "$side" /instances
    done
done
echo "scrape with $count instances: $bytes bytes, $series samples; $blocks blocks of $runs per side; load average $load0 -> $(cut -d' ' -f1-3 /proc/loadavg)"
for side in "${sides[@]}"; do
    read -r m50 m90 m95 mmax mcpu mtck < <(summary "$side" /metrics)
    read -r l50 l90 l95 lmax lcpu ltck < <(summary "$side" /instances)
    echo "$side GET /metrics:   p50 $m50 ms, p90 $m90 ms, p95 $m95 ms, max $mmax ms; daemon CPU $mcpu ms each ($mtck by clock ticks) (goal: <= 5 ms)"
    echo "$side GET /instances: p50 $l50 ms, p90 $l90 ms, p95 $l95 ms, max $lmax ms; daemon CPU $lcpu ms each ($ltck by clock ticks) (the state derivation both share)"
done
