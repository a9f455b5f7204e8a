#!/usr/bin/env bash
# Benchmark (not a test): `lodge run` until the guest program has started,
# against a bare qemu-system-x86_64 boot of the same kernel, initrd and disks
# with the same arguments, measured side by side in one run. Also reports the
# idle resident memory of the daemon and of one monitor.
#
# usage: scripts/bench-boot.sh [RUNS]   (needs the guest: scripts/build-guest.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
lodge="$(./scripts/build-release.sh)"
work="$(mktemp -d /tmp/lodge-bench-boot.XXXXXX)"
export LODGE_DATA_DIR="$work/data"
export LODGE_LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))"
export LODGE_BASE_URL="http://$LODGE_LISTEN"
"$lodge" serve >"$work/serve.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null; pkill -f "$work" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do "$lodge" ps >/dev/null 2>&1 && break; sleep 0.1; done

now() { date +%s%N; }
# Waits until FILE contains "started"; prints elapsed ms since $1.
wait_started() {
    local t0=$1 file=$2
    until grep -qs 'lodge-init: started' "$file"; do sleep 0.005; done
    echo $(( ($(now) - t0) / 1000000 ))
}

lodge_ms=(); bare_ms=()
for i in $(seq "$runs"); do
    t0=$(now)
    id=$("$lodge" run -d --name "bench-$i" --cpus 1 --memory 256MB --rootfs "$LODGE_SYSTEM_DIR/rootfs-busybox" sh -c 'sleep 2')
    dir="$LODGE_DATA_DIR/guests/$id"
    lodge_ms+=("$(wait_started "$t0" "$dir/status.log")")
    # The exact argv the monitor ran, for the bare baseline.
    child=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["child_pid"])' "$dir/logs/monitor.json")
    tr '\0' '\n' < "/proc/$child/cmdline" > "$work/argv"
    until [ "$("$lodge" inspect "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = Stopped ]; do sleep 0.1; done
    rm -f "$dir/status.log"
    mapfile -t argv < "$work/argv"
    t0=$(now)
    "${argv[@]}" >/dev/null 2>&1 </dev/null &
    qemu=$!
    bare_ms+=("$(wait_started "$t0" "$dir/status.log")")
    wait $qemu || true
    if [ "$i" = 1 ]; then
        # Memory: the daemon idle, and a monitor of a running VM.
        id2=$("$lodge" run -d --name mem --cpus 1 --memory 256MB --rootfs "$LODGE_SYSTEM_DIR/rootfs-busybox" sh -c 'sleep 30')
        sleep 3
        mon=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$LODGE_DATA_DIR/guests/$id2/logs/monitor.json")
        monitor_rss=$(awk '/VmRSS/{print $2}' "/proc/$mon/status")
        daemon_rss=$(awk '/VmRSS/{print $2}' "/proc/$daemon/status")
        "$lodge" rm -f "$id2" >/dev/null
    fi
    "$lodge" rm -f "$id" >/dev/null
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
lm=$(median "${lodge_ms[@]}"); bm=$(median "${bare_ms[@]}")
echo "lodge run -> program started: ${lodge_ms[*]} ms (median $lm)"
echo "bare qemu -> program started: ${bare_ms[*]} ms (median $bm)"
awk -v l="$lm" -v b="$bm" 'BEGIN {printf "ratio lodge/bare: %.3f (target <= 1.10)\n", l / b}'
echo "daemon idle RSS: ${daemon_rss} KiB; monitor RSS with a running VM: ${monitor_rss} KiB"
