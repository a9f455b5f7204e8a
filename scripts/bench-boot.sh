#!/usr/bin/env bash
# Benchmark (not a test): `lodge run` until the guest program has started,
# against a bare qemu-system-x86_64 boot of the same kernel, initrd and disks
# with the same arguments, measured side by side in one run. The two sides
# alternate which goes first (odd runs lodge first, even runs bare first), so
# neither always gets the warmer caches; min and median of both are
# reported. Also reports the idle resident memory of the daemon and of one
# monitor.
#
# Cleanup ends only this script's own processes, by PID: the daemon and the
# bare QEMU it started, and the monitors and VMMs recorded in its own data
# dir's monitor.json files (checked against their command lines first).
#
# Measured 2026-11-30 (TCG, lodge kernel, static release binary, 9 runs,
# load ~3.7): lodge median 2072 ms vs bare 2018 ms, ratio 1.027 (min 1.010);
# monitor RSS 3.6 MiB, daemon idle 14.7 MiB.
#
# usage: scripts/bench-boot.sh [RUNS]   (needs the guest: scripts/build-guest.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
# LODGE_BIN: a lodge binary to use instead of the static release build.
lodge="${LODGE_BIN:-$(./scripts/build-release.sh)}"
work="$(mktemp -d /tmp/lodge-bench-boot.XXXXXX)"
export LODGE_DATA_DIR="$work/data"
# Benchmarks never touch the host's network (scripts/bench-net.sh builds its own).
export LODGE_NETWORK="${LODGE_NETWORK:-off}"
export LODGE_LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))"
export LODGE_BASE_URL="http://$LODGE_LISTEN"

daemon=""
qemu=""
# Sends SIGTERM to PID if its command line names this run's scratch dir (so a
# recycled PID of someone else's process is left alone).
kill_own() {
    local pid=$1
    [ -n "$pid" ] || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$work"; then
        kill "$pid" 2>/dev/null || true
    fi
}
cleanup() {
    set +e
    if [ -n "$qemu" ]; then kill "$qemu" 2>/dev/null; wait "$qemu" 2>/dev/null; fi
    for f in "$LODGE_DATA_DIR"/guests/*/logs/monitor.json; do
        [ -f "$f" ] || continue
        for key in child_pid pid; do
            kill_own "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$f" "$key" 2>/dev/null)"
        done
    done
    if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; fi
    rm -rf "$work"
}
trap cleanup EXIT

"$lodge" serve >"$work/serve.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do "$lodge" ps >/dev/null 2>&1 && break; sleep 0.1; done

now() { date +%s%N; }
# Waits until FILE contains "started"; prints elapsed ms since $1.
wait_started() {
    local t0=$1 file=$2
    until grep -qs 'lodge-init: started' "$file"; do sleep 0.005; done
    echo $(( ($(now) - t0) / 1000000 ))
}
state() { "$lodge" inspect "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }
wait_stopped() { until [ "$(state "$1")" = Stopped ]; do sleep 0.1; done; }
boot_args=(--cpus 1 --memory 256MB --rootfs "$LODGE_SYSTEM_DIR/rootfs-busybox")

# The bare baseline boots a reference instance's disks with the exact argv
# its monitor ran, after lodge has stopped it.
ref=$("$lodge" run -d --name bench-ref "${boot_args[@]}" sh -c 'sleep 2')
ref_dir="$LODGE_DATA_DIR/guests/$ref"
wait_started "$(now)" "$ref_dir/logs/status.log" >/dev/null
child=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["child_pid"])' "$ref_dir/logs/monitor.json")
mapfile -t argv < <(tr '\0' '\n' <"/proc/$child/cmdline")
wait_stopped "$ref"

lodge_ms=(); bare_ms=()
measure_lodge() {
    local i=$1 t0 id dir
    t0=$(now)
    id=$("$lodge" run -d --name "bench-$i" "${boot_args[@]}" sh -c 'sleep 2')
    dir="$LODGE_DATA_DIR/guests/$id"
    lodge_ms+=("$(wait_started "$t0" "$dir/logs/status.log")")
    wait_stopped "$id"
    "$lodge" rm -f "$id" >/dev/null
}
# The monitor hands QEMU its channels as inherited descriptors
# (`-add-fd fd=N,…`): the status channel as fd 3, the fast console's pipe as
# another. Here each is a plain file; without them QEMU refuses to start.
extra_fds=""
for a in "${argv[@]}"; do
    if [[ $a =~ ^fd=([0-9]+),set= ]] && [ "${BASH_REMATCH[1]}" != 3 ]; then
        extra_fds+=" ${BASH_REMATCH[1]}>>\"\$ref_dir/fd${BASH_REMATCH[1]}.out\""
    fi
done
measure_bare() {
    local t0
    rm -f "$ref_dir/status.log" "$ref_dir"/fd*.out
    t0=$(now)
    eval '"${argv[@]}" >/dev/null 2>&1 </dev/null 3>>"$ref_dir/status.log"'"$extra_fds"' &'
    qemu=$!
    bare_ms+=("$(wait_started "$t0" "$ref_dir/status.log")")
    wait "$qemu" || true
    qemu=""
}

for i in $(seq "$runs"); do
    if (( i % 2 )); then measure_lodge "$i"; measure_bare; else measure_bare; measure_lodge "$i"; fi
    if [ "$i" = 1 ]; then
        # Memory: the daemon idle, and a monitor of a running VM.
        id2=$("$lodge" run -d --name mem "${boot_args[@]}" sh -c 'sleep 30')
        sleep 3
        mon=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$LODGE_DATA_DIR/guests/$id2/logs/monitor.json")
        monitor_rss=$(awk '/VmRSS/{print $2}' "/proc/$mon/status")
        daemon_rss=$(awk '/VmRSS/{print $2}' "/proc/$daemon/status")
        "$lodge" rm -f "$id2" >/dev/null
    fi
done
"$lodge" rm -f "$ref" >/dev/null

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
minimum() { printf '%s\n' "$@" | sort -n | head -n 1; }
lm=$(median "${lodge_ms[@]}"); bm=$(median "${bare_ms[@]}")
lmin=$(minimum "${lodge_ms[@]}"); bmin=$(minimum "${bare_ms[@]}")
echo "lodge run -> program started: ${lodge_ms[*]} ms (min $lmin, median $lm)"
echo "bare qemu -> program started: ${bare_ms[*]} ms (min $bmin, median $bm)"
awk -v l="$lm" -v b="$bm" -v lmin="$lmin" -v bmin="$bmin" 'BEGIN {
    printf "ratio lodge/bare: median %.3f (target <= 1.10), min %.3f\n", l / b, lmin / bmin
}'
echo "daemon idle RSS: ${daemon_rss} KiB; monitor RSS with a running VM: ${monitor_rss} KiB"
