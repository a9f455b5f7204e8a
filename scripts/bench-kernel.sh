#!/usr/bin/env bash
# Benchmark (not a test): `lodge run` until the guest program has started, on
# the lodge kernel against Debian's kernel, same image (the busybox rootfs),
# same lodge binary, measured side by side in one run. Two daemons run at
# once, one per system dir (LODGE_SYSTEM_DIR is a daemon setting); the sides
# alternate which goes first (odd runs lodge first, even runs Debian first),
# so neither always gets the warmer caches. Prints both series, min and
# median, and the ratio lodge/Debian (the issue's goal: <= 0.35).
#
# The lodge kernel's system dir is $LODGE_SYSTEM_DIR (default
# ./.lodge-cache/system), Debian's is $LODGE_DEBIAN_SYSTEM_DIR (default
# ./.lodge-cache/system-debian); each is built with scripts/build-guest.sh
# --kernel lodge|debian when its kernel-flavor file says otherwise.
#
# Cleanup ends only this script's own processes, by PID: the daemons it
# started, and the monitors and VMMs recorded in its own data dirs'
# monitor.json files (checked against their command lines first).
#
# usage: scripts/bench-kernel.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
lodge_sys="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
debian_sys="${LODGE_DEBIAN_SYSTEM_DIR:-$PWD/.lodge-cache/system-debian}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
# Benchmarks never touch the host's network.
export LODGE_NETWORK="${LODGE_NETWORK:-off}"
unset LODGE_SYSTEM_DIR

for pair in "lodge:$lodge_sys" "debian:$debian_sys"; do
    flavor=${pair%%:*} dir=${pair#*:}
    if [ "$(cat "$dir/kernel-flavor" 2>/dev/null || echo debian)" != "$flavor" ] ||
        [ ! -e "$dir/initrd.img" ]; then
        ./scripts/build-guest.sh --kernel "$flavor" "$dir" >&2
    fi
done
# LODGE_BIN: a lodge binary to use instead of the static release build.
lodge="${LODGE_BIN:-$(./scripts/build-release.sh)}"
work="$(mktemp -d /tmp/lodge-bench-kernel.XXXXXX)"

daemons=()
kill_own() {
    local pid=$1
    [ -n "$pid" ] || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$work"; then
        kill "$pid" 2>/dev/null || true
    fi
}
cleanup() {
    set +e
    for f in "$work"/*/data/guests/*/logs/monitor.json; do
        [ -f "$f" ] || continue
        for key in child_pid pid; do
            kill_own "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$f" "$key" 2>/dev/null)"
        done
    done
    for pid in "${daemons[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

# side FLAVOR CMD...: run a lodge command against FLAVOR's daemon.
side() {
    local flavor=$1
    shift
    LODGE_DATA_DIR="$work/$flavor/data" LODGE_BASE_URL="$(cat "$work/$flavor/url")" "$@"
}
for pair in "lodge:$lodge_sys" "debian:$debian_sys"; do
    flavor=${pair%%:*} dir=${pair#*:}
    mkdir -p "$work/$flavor"
    listen="127.0.0.1:$((20000 + RANDOM % 20000))"
    echo "http://$listen" > "$work/$flavor/url"
    LODGE_SYSTEM_DIR="$dir" LODGE_DATA_DIR="$work/$flavor/data" LODGE_LISTEN="$listen" \
        "$lodge" serve >"$work/$flavor/serve.log" 2>&1 &
    daemons+=($!)
    for _ in $(seq 100); do side "$flavor" "$lodge" ps >/dev/null 2>&1 && break; sleep 0.1; done
done

now() { date +%s%N; }
boot_args=(--cpus 1 --memory 256MB --rootfs "$lodge_sys/rootfs-busybox")
state() { side "$1" "$lodge" inspect "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }
lodge_ms=(); debian_ms=()
# measure FLAVOR I: `lodge run -d` to "lodge-init: started" on the status channel.
measure() {
    local flavor=$1 i=$2 t0 id file ms
    t0=$(now)
    id=$(side "$flavor" "$lodge" run -d --name "bench-$i" "${boot_args[@]}" sh -c 'sleep 1')
    file="$work/$flavor/data/guests/$id/logs/status.log"
    until grep -qs 'lodge-init: started' "$file"; do sleep 0.005; done
    ms=$(( ($(now) - t0) / 1000000 ))
    until [ "$(state "$flavor" "$id")" = Stopped ]; do sleep 0.1; done
    side "$flavor" "$lodge" rm -f "$id" >/dev/null
    if [ "$flavor" = lodge ]; then lodge_ms+=("$ms"); else debian_ms+=("$ms"); fi
}
for i in $(seq "$runs"); do
    if (( i % 2 )); then measure lodge "$i"; measure debian "$i"; else measure debian "$i"; measure lodge "$i"; fi
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
minimum() { printf '%s\n' "$@" | sort -n | head -n 1; }
lm=$(median "${lodge_ms[@]}"); dm=$(median "${debian_ms[@]}")
lmin=$(minimum "${lodge_ms[@]}"); dmin=$(minimum "${debian_ms[@]}")
echo "accel $LODGE_ACCEL, $runs runs each; kernels: lodge $(cat "$lodge_sys/kernel-version"), debian $(cat "$debian_sys/kernel-version")"
echo "lodge kernel  run -> program started: ${lodge_ms[*]} ms (min $lmin, median $lm)"
echo "debian kernel run -> program started: ${debian_ms[*]} ms (min $dmin, median $dm)"
awk -v l="$lm" -v d="$dm" -v lmin="$lmin" -v dmin="$dmin" 'BEGIN {
    printf "ratio lodge/debian: median %.3f (goal <= 0.35), min %.3f\n", l / d, lmin / dmin
}'
