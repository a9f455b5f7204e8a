#!/usr/bin/env bash
# Benchmark (not a test): the guest agent's exec latency and copy rate.
#
# - `lodge exec INSTANCE true`, 100 runs: p50 and p99 of the whole round
#   trip (CLI start, WebSocket, agent connection, fork+exec in the guest,
#   exit status back), next to `lodge inspect INSTANCE` (same CLI, one plain
#   HTTP request) as the floor the CLI itself costs.
# - `lodge cp` of a 100 MiB file into and out of the guest (median of 3),
#   against the raw rate of the same virtio-serial channel: the daemon's
#   /instances/{id}/agent/throughput endpoint moves the same number of zero
#   bytes through the agent protocol's framing and flow control, with no
#   files, no WebSocket and no CLI (the agent generates or discards them).
#   The ratio cp/raw is what files, the WebSocket hop and the CLI cost.
#
# usage: scripts/bench-exec.sh   (needs the guest: scripts/build-guest.sh)
#   RUNS=N       exec/inspect pairs (default 100; 0 skips the exec part)
#   CP_RUNS=N    cp rounds, each raw and cp both ways (default 3; 0 skips)
#   SIZE_MIB=N   the copied file's size (default 100)
#   LODGE_BIN=P  time this lodge binary instead of building one
#   BASE_BIN=P   also time this "before" build, side by side: a second daemon
#                and VM (BASE_SYSTEM_DIR, default /work/main/.lodge-cache/system
#                style: the main checkout's), exec and inspect interleaved
#                with this build's, so load hits both alike; prints both and
#                the after/before ratio of the exec/inspect ratios
# scripts/bench-cp.sh is the cp part alone.
set -euo pipefail
cd "$(dirname "$0")/.."
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
runs="${RUNS:-100}"
cp_runs="${CP_RUNS:-3}"
size_mib="${SIZE_MIB:-100}"
# The binary users install (static, scripts/build-release.sh), not the
# dynamic target/release one: its CLI starts faster, and `inspect` is this
# benchmark's floor.
lodge="${LODGE_BIN:-$(./scripts/build-release.sh)}"
work="$(mktemp -d /tmp/lodge-bench-exec.XXXXXX)"
export LODGE_DATA_DIR="$work/data"
# Benchmarks never touch the host's network (scripts/bench-net.sh builds its own).
export LODGE_NETWORK="${LODGE_NETWORK:-off}"
export LODGE_BENCH_ENDPOINTS=1 # the agent throughput route (off by default)
export LODGE_LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))"
export LODGE_BASE_URL="http://$LODGE_LISTEN"
base="${BASE_BIN:-}"
if [ -n "$base" ]; then
    base_port=$((20000 + RANDOM % 20000))
    [ "$base_port" != "${LODGE_LISTEN##*:}" ] || base_port=$((base_port + 1))
fi
# base ARGS...: the "before" build's CLI, with its own daemon and guest
# (a function, so a sample costs the same fork and exec as this build's).
base() {
    LODGE_DATA_DIR="$work/base-data" LODGE_LISTEN="127.0.0.1:$base_port" \
        LODGE_BASE_URL="http://127.0.0.1:$base_port" \
        LODGE_SYSTEM_DIR="${BASE_SYSTEM_DIR:-$LODGE_SYSTEM_DIR}" "$base" "$@"
}
"$lodge" serve >"$work/serve.log" 2>&1 &
daemon=$!
base_daemon=
if [ -n "$base" ]; then
    # Through env, not the function: `$!` must be the daemon itself (a
    # function in the background is a subshell, and killing that would
    # leave the daemon running).
    env LODGE_DATA_DIR="$work/base-data" LODGE_LISTEN="127.0.0.1:$base_port" \
        LODGE_BASE_URL="http://127.0.0.1:$base_port" \
        LODGE_SYSTEM_DIR="${BASE_SYSTEM_DIR:-$LODGE_SYSTEM_DIR}" \
        "$base" serve >"$work/base-serve.log" 2>&1 &
    base_daemon=$!
fi
cleanup() {
    "$lodge" rm -f bench >/dev/null 2>&1 || true
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    if [ -n "$base_daemon" ]; then
        base rm -f bench >/dev/null 2>&1 || true
        kill "$base_daemon" 2>/dev/null || true
        wait "$base_daemon" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
# start_guest SYSTEM_DIR CLI...: a daemon up and the bench VM running with
# its agent.
start_guest() {
    local sys=$1
    shift
    for _ in $(seq 100); do "$@" ps >/dev/null 2>&1 && break; sleep 0.1; done
    "$@" run -d --name bench --cpus 1 --memory 256MB --overlay-size 1GB \
        --rootfs "$sys/rootfs-busybox" sh -c 'while :; do sleep 3600; done' >/dev/null
    until [ "$("$@" inspect bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = Running ]; do
        sleep 0.1
    done
    "$@" exec --wait-for-agent 60 bench true
}
start_guest "$LODGE_SYSTEM_DIR" "$lodge"
[ -z "$base" ] || start_guest "${BASE_SYSTEM_DIR:-$LODGE_SYSTEM_DIR}" base
token=$("$lodge" token)

now() { date +%s%N; }
# percentile P VALUES...: nearest-rank percentile.
percentile() {
    local p=$1
    shift
    printf '%s\n' "$@" | sort -n | awk -v p="$p" '{a[NR]=$1} END {i=int((p*NR+99)/100); if (i<1) i=1; print a[i]}'
}
median() { percentile 50 "$@"; }

# The exec and inspect samples read bash's $EPOCHREALTIME (microseconds)
# instead of forking `date`: a fork per sample costs more than a
# millisecond under load, and it blurred the exec/inspect ratio.
exec_us=(); inspect_us=(); base_exec_us=(); base_inspect_us=()
for _ in $(seq 1 "$runs"); do
    t0=${EPOCHREALTIME/./}; "$lodge" exec bench true; exec_us+=($((${EPOCHREALTIME/./} - t0)))
    t0=${EPOCHREALTIME/./}; "$lodge" inspect bench >/dev/null; inspect_us+=($((${EPOCHREALTIME/./} - t0)))
    [ -n "$base" ] || continue
    t0=${EPOCHREALTIME/./}; base exec bench true; base_exec_us+=($((${EPOCHREALTIME/./} - t0)))
    t0=${EPOCHREALTIME/./}; base inspect bench >/dev/null; base_inspect_us+=($((${EPOCHREALTIME/./} - t0)))
done

size=$((size_mib << 20))
head -c "$size" /dev/urandom >"$work/big"
rate() { awk -v b="$1" -v ns="$2" 'BEGIN {printf "%.1f", b / 1048576 / (ns / 1e9)}'; }
raw() {
    curl -sf -H "Authorization: Bearer $token" \
        "$LODGE_BASE_URL/instances/bench/agent/throughput?direction=$1&bytes=$size" |
        python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["mib_per_s"])'
}
cp_in=(); cp_out=(); raw_to=(); raw_from=()
for _ in $(seq 1 "$cp_runs"); do
    raw_to+=("$(raw to)")
    t0=$(now); "$lodge" cp "$work/big" bench:/tmp/big; cp_in+=("$(rate "$size" $(( $(now) - t0 )))")
    raw_from+=("$(raw from)")
    t0=$(now); "$lodge" cp bench:/tmp/big "$work/back"; cp_out+=("$(rate "$size" $(( $(now) - t0 )))")
    cmp -s "$work/big" "$work/back" || { echo "bench-exec: the copy came back different" >&2; exit 1; }
    rm -f "$work/back"
done

echo "accel: $LODGE_ACCEL, $runs runs, $cp_runs cp rounds of $size_mib MiB, load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$runs" -gt 0 ]; then
ep50=$(percentile 50 "${exec_us[@]}"); ep99=$(percentile 99 "${exec_us[@]}")
ip50=$(percentile 50 "${inspect_us[@]}"); ip99=$(percentile 99 "${inspect_us[@]}")
awk -v a="$ep50" -v b="$ep99" 'BEGIN {printf "lodge exec true:     p50 %.1f ms  p99 %.1f ms\n", a/1000, b/1000}'
awk -v a="$ip50" -v b="$ip99" 'BEGIN {printf "lodge inspect (CLI): p50 %.1f ms  p99 %.1f ms\n", a/1000, b/1000}'
awk -v a="$ep50" -v b="$ip50" 'BEGIN {printf "exec/inspect p50 ratio: %.2f\n", a/b}'
if [ -n "$base" ]; then
bep50=$(percentile 50 "${base_exec_us[@]}"); bep99=$(percentile 99 "${base_exec_us[@]}")
bip50=$(percentile 50 "${base_inspect_us[@]}"); bip99=$(percentile 99 "${base_inspect_us[@]}")
awk -v a="$bep50" -v b="$bep99" 'BEGIN {printf "before: lodge exec true:     p50 %.1f ms  p99 %.1f ms\n", a/1000, b/1000}'
awk -v a="$bip50" -v b="$bip99" 'BEGIN {printf "before: lodge inspect (CLI): p50 %.1f ms  p99 %.1f ms\n", a/1000, b/1000}'
awk -v a="$bep50" -v b="$bip50" 'BEGIN {printf "before: exec/inspect p50 ratio: %.2f\n", a/b}'
awk -v a="$ep50" -v b="$bep50" 'BEGIN {printf "exec p50 after/before: %.2f\n", a/b}'
fi
fi
[ "$cp_runs" -gt 0 ] || exit 0
ci=$(median "${cp_in[@]}"); co=$(median "${cp_out[@]}")
rt=$(median "${raw_to[@]}"); rf=$(median "${raw_from[@]}")
echo "cp into the guest:   ${cp_in[*]} MiB/s (median $ci); raw channel host->guest ${raw_to[*]} (median $rt)"
echo "cp out of the guest: ${cp_out[*]} MiB/s (median $co); raw channel guest->host ${raw_from[*]} (median $rf)"
awk -v c="$ci" -v r="$rt" 'BEGIN {printf "ratio cp in / raw:  %.2f\n", c/r}'
awk -v c="$co" -v r="$rf" 'BEGIN {printf "ratio cp out / raw: %.2f\n", c/r}'
