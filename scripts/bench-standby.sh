#!/usr/bin/env bash
# Benchmark (not a test): standby and restore against their cold
# counterparts, side by side in one run.
#
# - restore → guest answering (an exec of `true` through the guest agent
#   succeeds) against a cold `run` → guest answering, same rootfs and
#   memory (256 MiB); median of RUNS (default 5). Goal ≤ 0.25.
# - standby time per GiB of guest memory against `cp` of a file of the
#   same size to the same disk: a 1 GiB guest fills FILL_MIB (default 640)
#   of a tmpfs with random bytes, so its RAM is nearly all touched; the
#   standby (pause, save, VMM exit, fsync) is timed by the API call, the
#   copy as `cp` + `sync` of that file (durable, as a standby is) and also
#   plain `cp`. Goal ≤ 1.5.
# - with compression (zstd, then lz4, default levels): the compressed size
#   against the memory's, and the restore→answering time it adds.
#
# Both guest memory modes are measured: the default (guest RAM is a shared
# file in the instance dir, standby saves only the devices) and
# LODGE_MEMORY_FILE=off (anonymous RAM streamed to the state file).
#
# usage: scripts/bench-standby.sh   (needs the guest: scripts/build-guest.sh)
#        LODGE_BIN=target/debug/lodge scripts/bench-standby.sh  (skip the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
runs="${RUNS:-5}"
fill_mib="${FILL_MIB:-640}"
lodge="${LODGE_BIN:-$(./scripts/build-release.sh)}"
work="$(mktemp -d /tmp/lodge-bench-standby.XXXXXX)"
# Benchmarks never touch the host's network.
export LODGE_NETWORK=off
export LODGE_LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))"
export LODGE_BASE_URL="http://$LODGE_LISTEN"
daemon=""
start_daemon() { # MODE (on|off)
    export LODGE_DATA_DIR="$work/data-$1"
    LODGE_MEMORY_FILE="$1" "$lodge" serve >"$work/serve-$1.log" 2>&1 &
    daemon=$!
    for _ in $(seq 100); do "$lodge" ps >/dev/null 2>&1 && return; sleep 0.1; done
    echo "bench-standby: the daemon did not start" >&2; exit 1
}
stop_daemon() {
    "$lodge" rm -f $("$lodge" ps -a -q) >/dev/null 2>&1 || true
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    daemon=""
}
cleanup() {
    [ -n "$daemon" ] && stop_daemon
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s%N; }
ms() { echo $(( ($(now) - $1) / 1000000 )); }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
answering() { until "$lodge" exec "$1" true 2>/dev/null; do sleep 0.02; done; }
rootfs="$LODGE_SYSTEM_DIR/rootfs-busybox"

for mode in on off; do
    start_daemon "$mode"
    cold=(); restore=()
    for i in $(seq "$runs"); do
        t0=$(now)
        "$lodge" run -d --name "cold$i" --cpus 1 --memory 256MB \
            --rootfs "$rootfs" sh -c 'while :; do sleep 3600; done' >/dev/null
        answering "cold$i"
        cold+=("$(ms "$t0")")
        "$lodge" standby "cold$i" >/dev/null
        t0=$(now)
        "$lodge" restore "cold$i" >/dev/null
        answering "cold$i"
        restore+=("$(ms "$t0")")
        "$lodge" rm -f "cold$i" >/dev/null
    done
    c=$(median "${cold[@]}"); r=$(median "${restore[@]}")
    echo "memory file $mode: restore→answering ${r} ms, cold run→answering ${c} ms: ratio $(ratio "$r" "$c") (goal ≤ 0.25) [restore ${restore[*]}; cold ${cold[*]}]"

    "$lodge" run -d --name fill --cpus 1 --memory 1GB --rootfs "$rootfs" sh -c \
        "mkdir -p /fill && mount -t tmpfs -o size=${fill_mib}m none /fill && \
         dd if=/dev/urandom of=/fill/x bs=1M count=$((fill_mib - 4)) 2>/dev/null && echo filled; \
         while :; do sleep 3600; done" >/dev/null
    until "$lodge" logs fill 2>/dev/null | grep -q filled; do
        "$lodge" logs fill 2>/dev/null | grep -q "Out of memory" && { echo "bench-standby: the guest ran out of memory; lower FILL_MIB" >&2; exit 1; }
        sleep 0.5
    done
    t0=$(now); "$lodge" standby fill >/dev/null; standby=$(ms "$t0")
    dir="$LODGE_DATA_DIR/guests/$("$lodge" inspect fill | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
    state=$(du -sm "$dir/standby" | cut -f1); ram=$(du -sm "$dir/memory.ram" 2>/dev/null | cut -f1 || echo 0)
    # The same number of bytes as the guest's memory, copied on the same disk.
    head -c $((1 << 30)) /dev/urandom >"$work/data-$mode/src"
    sync
    t0=$(now); cp "$work/data-$mode/src" "$work/data-$mode/dst"; cp_plain=$(ms "$t0")
    rm -f "$work/data-$mode/dst"; sync
    t0=$(now); cp "$work/data-$mode/src" "$work/data-$mode/dst"; sync "$work/data-$mode/dst"; cp_sync=$(ms "$t0")
    rm -f "$work/data-$mode/src" "$work/data-$mode/dst"
    t0=$(now); "$lodge" restore fill >/dev/null; answering fill; big_restore=$(ms "$t0")
    echo "memory file $mode: standby of a 1 GiB guest (${fill_mib} MiB touched; state ${state} MiB, RAM file ${ram} MiB) ${standby} ms; cp+sync of 1 GiB ${cp_sync} ms: ratio $(ratio "$standby" "$cp_sync") (goal ≤ 1.5); plain cp ${cp_plain} ms: ratio $(ratio "$standby" "$cp_plain"); its restore→answering ${big_restore} ms"
    # With compression: the compressed size against the memory's, and
    # what decompressing adds to the restore.
    pattern="memory compressed\|compression failed"
    for alg in zstd lz4; do
        seen=$(grep -c "$pattern" "$dir/logs/lodge.log" || true)
        "$lodge" standby fill --compress "$alg" >/dev/null
        until [ "$(grep -c "$pattern" "$dir/logs/lodge.log" || true)" -gt "$seen" ]; do sleep 0.2; done
        line=$(grep "$pattern" "$dir/logs/lodge.log" | tail -1)
        t0=$(now); "$lodge" restore fill >/dev/null; answering fill; packed_restore=$(ms "$t0")
        echo "memory file $mode: $alg: ${line#* }; restore→answering ${packed_restore} ms (uncompressed ${big_restore} ms)"
    done
    stop_daemon
done
