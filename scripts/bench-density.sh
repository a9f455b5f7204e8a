#!/usr/bin/env bash
# Benchmark (not a test): what an idle VM costs the host. N (default 10)
# idle busybox VMs, default memory (1 GiB), 1 vCPU, booted through lodge;
# once every guest answers and the VMMs' memory has stopped moving, the
# host memory of each VM's QEMU + its monitor (from /proc/PID/smaps_rollup):
#
#   RSS      resident pages, shared ones (QEMU's binary and libraries, the
#            kernel image QEMU maps) counted in full for every VM;
#   PSS      the same with each shared page split among the processes that
#            map it: what N VMs cost the host, divided by N;
#   private  pages no other process maps (guest RAM, QEMU's heap, TCG code).
#
# and QEMU's split: guest RAM (the memory file's mapping, or the largest
# anonymous one with LODGE_MEMORY_FILE=off) and TCG's translation cache
# (anonymous executable mappings).
#
# Side by side in one run: lodge's settings, then the old ones
# (LODGE_TCG_TB_SIZE=qemu: QEMU's own 1 GiB translation cache), each on a
# daemon of its own; ratios new/old. Goal: ≤ 64 MiB per idle VM.
#
# Measured 2026-11-30 (TCG, 2 busy cores, Debian's 6.1 kernel, debug
# lodge binary, N=10): per idle VM RSS 249.2 vs 303.2 MiB (0.82), PSS
# 161.4 vs 212.1 (0.76), private 151.9 vs 206.0 (0.74); guest RAM 112 on
# both sides, TCG code 16 vs 62. What is left is mostly the guest kernel's
# own (image, 16 MiB of page structures for 1 GiB, slab): free page
# reporting finds nothing more to return at idle, and dropping the guest's
# caches frees nothing (its slab is sysfs/devtmpfs, not reclaimable).
#
# usage: scripts/bench-density.sh   (needs the guest: scripts/build-guest.sh)
#        N=4 LODGE_BIN=target/debug/lodge scripts/bench-density.sh
#        MODES="16MiB qemu" picks the LODGE_TCG_TB_SIZE values compared
#        (the first is "new", the last "old").
set -euo pipefail
cd "$(dirname "$0")/.."
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
n="${N:-10}"
read -r -a modes <<<"${MODES:-default qemu}"
lodge="${LODGE_BIN:-$(./scripts/build-release.sh)}"
work="$(mktemp -d /tmp/lodge-bench-density.XXXXXX)"
# Benchmarks never touch the host's network.
export LODGE_NETWORK=off
export LODGE_LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))"
export LODGE_BASE_URL="http://$LODGE_LISTEN"
export LODGE_OVERSUB_CPU="${LODGE_OVERSUB_CPU:-32}"
daemon=""
start_daemon() { # TB_SIZE
    export LODGE_DATA_DIR="$work/data-$1"
    if [ "$1" = default ]; then
        env -u LODGE_TCG_TB_SIZE "$lodge" serve >"$work/serve-$1.log" 2>&1 &
    else
        LODGE_TCG_TB_SIZE="$1" "$lodge" serve >"$work/serve-$1.log" 2>&1 &
    fi
    daemon=$!
    for _ in $(seq 100); do "$lodge" ps >/dev/null 2>&1 && return; sleep 0.1; done
    echo "bench-density: the daemon did not start" >&2; exit 1
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

# The pids of one instance's monitor and VMM, from the monitor's record.
pids() { # ID
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["pid"]); print(r["child_pid"])' \
        "$LODGE_DATA_DIR/guests/$1/logs/monitor.json"
}
# kB of FIELD in /proc/PID/smaps_rollup.
rollup() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/smaps_rollup"; }
# kB resident in QEMU's guest RAM mapping and in its code cache.
split() { # PID
    awk '/^[0-9a-f]+-[0-9a-f]+ / { perms = $2; path = $6; next }
         $1 == "Size:" {
            ram = (path ~ /memory\.ram$/) || (path == "" && $2 >= 262144 && perms !~ /x/)
            code = (path == "" && perms ~ /x/) }
         $1 == "Rss:" { if (ram) g += $2; if (code) c += $2 }
         END { printf "%d %d\n", g, c }' "/proc/$1/smaps"
}
# Total RSS (kB) of every VMM: to see when it has stopped moving.
total_rss() {
    local t=0 id p
    for id in $ids; do
        p=$(pids "$id" | tail -n 1)
        t=$((t + $(rollup "$p" Rss)))
    done
    echo "$t"
}
mib() { awk -v k="$1" -v n="$2" 'BEGIN {printf "%.1f", k / 1024 / n}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

declare -A result
for mode in "${modes[@]}"; do
    start_daemon "$mode"
    t0=$(date +%s)
    for i in $(seq "$n"); do
        "$lodge" run -d --name "idle$i" --cpus 1 \
            --rootfs "$LODGE_SYSTEM_DIR/rootfs-busybox" sh -c 'while :; do sleep 3600; done' >/dev/null
    done
    for i in $(seq "$n"); do
        until "$lodge" exec "idle$i" true >/dev/null 2>&1; do sleep 0.5; done
    done
    booted=$(($(date +%s) - t0))
    ids=$("$lodge" ps -a -q)
    # Idle: the VMMs' total RSS moves by under 1 MiB per VM in 5 s, at
    # least 10 s after the last guest answered (free page reporting waits
    # 2 s), at most 2 minutes.
    sleep 10
    prev=$(total_rss)
    for _ in $(seq 24); do
        sleep 5
        now=$(total_rss)
        [ $(((now > prev ? now - prev : prev - now) / 1024)) -lt "$n" ] && break
        prev=$now
    done
    rss=0 pss=0 priv=0 qrss=0 ram=0 code=0
    for id in $ids; do
        for p in $(pids "$id"); do
            rss=$((rss + $(rollup "$p" Rss)))
            pss=$((pss + $(rollup "$p" Pss)))
            priv=$((priv + $(rollup "$p" Private_Clean) + $(rollup "$p" Private_Dirty)))
        done
        p=$(pids "$id" | tail -n 1)
        qrss=$((qrss + $(rollup "$p" Rss)))
        read -r g c < <(split "$p")
        ram=$((ram + g)); code=$((code + c))
    done
    result[$mode]="$rss $pss $priv $ram $code"
    echo "LODGE_TCG_TB_SIZE=$mode: $n idle VMs (booted in ${booted} s), per VM (MiB): RSS $(mib $rss "$n") (QEMU $(mib $qrss "$n")), PSS $(mib $pss "$n"), private $(mib $priv "$n"); QEMU's guest RAM $(mib $ram "$n"), TCG code $(mib $code "$n")"
    stop_daemon
done

if [ "${#modes[@]}" -ge 2 ]; then
    read -r nr np nv ng nc <<<"${result[${modes[0]}]}"
    read -r or op ov og oc <<<"${result[${modes[-1]}]}"
    echo "ratio ${modes[0]}/${modes[-1]} per idle VM: RSS $(ratio "$nr" "$or") ($(mib "$nr" "$n") vs $(mib "$or" "$n") MiB), PSS $(ratio "$np" "$op") ($(mib "$np" "$n") vs $(mib "$op" "$n") MiB), private $(ratio "$nv" "$ov"); guest RAM $(mib "$ng" "$n") vs $(mib "$og" "$n"), TCG code $(mib "$nc" "$n") vs $(mib "$oc" "$n") (goal ≤ 64 MiB per VM)"
fi
