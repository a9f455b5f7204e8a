#!/usr/bin/env bash
# Benchmark (not a test): what an idle VM costs the host. N (default 10)
# idle busybox VMs, default memory (1 GiB), 1 vCPU, booted through lodge;
# once every guest answers and the VMMs' memory has stopped moving, the
# host memory of each VM's QEMU + its monitor (from /proc/PID/smaps):
#
#   RSS      resident pages, shared ones (QEMU's binary and libraries, the
#            kernel image QEMU maps) counted in full for every VM;
#   PSS      the same with each shared page split among the processes that
#            map it: what N VMs cost the host, divided by N;
#   private  pages no other process maps (guest RAM, QEMU's heap, TCG code).
#
# and where it is: the monitor; QEMU's guest RAM (the memory file's
# mapping, or the largest anonymous one with LODGE_MEMORY_FILE=off), TCG's
# translation cache (anonymous executable mappings), QEMU's other
# anonymous memory, the guest kernel and initrd files QEMU keeps mapped,
# and QEMU's binary and libraries.
#
# Side by side in one run, each mode on a daemon of its own; ratios of the
# first mode to the last. A mode is `default` (lodge's settings), a bare
# LODGE_TCG_TB_SIZE value (`qemu`: QEMU's own 1 GiB cache), or
# `label:VAR=value;VAR=value` (that daemon's environment, e.g.
# `old:LODGE_SYSTEM_DIR=/elsewhere` for another guest build). The default
# pair is `default` and `old`: free page reporting of the lodge kernel's
# own 4 MiB blocks instead of lodge's 32 KiB (`page_reporting_order` 10
# instead of 3). ROUNDS (default 1) repeats the modes interleaved; the
# ratios average over rounds.
#
# Measured 2026-11-30 (TCG, 2 busy cores, load ~12, lodge kernel, debug
# lodge binary, N=10), this build against the one before (MODES="default
# old:LODGE_SYSTEM_DIR=<main's system dir>": the kernel's own 4 MiB
# reporting order and its ELF with symbols), per idle VM: RSS 131.4 vs
# 138.6 MiB (0.95), PSS 83.8 vs 91.3 (0.92), private 79.7 vs 87.0 (0.92);
# guest RAM 41.6 vs 47.8, QEMU's other anonymous memory 15.3 vs 16.4, TCG
# code 16 on both. The monitor is 15 MiB of RSS (3.5 PSS) only in a debug
# build (its binary's pages). With main's static release binary (the order
# given as LODGE_KERNEL_ARGS), same pair, N=10: RSS 119.9 vs 127.7 (0.94),
# PSS 81.6 vs 89.5 (0.91), private 77.6 vs 85.3; its monitor 3.5 MiB RSS,
# 0.5 PSS. What is left: guest RAM (the kernel image, 16 MiB of page
# structures for 1 GiB, slab, the initramfs the init runs from), TCG's 16
# MiB, QEMU's heap and vCPU arena (~15), and QEMU's binary, libraries and
# the kernel files it maps (~44 MiB, shared between VMs: RSS counts them
# for every VM, PSS does not). The goal (≤ 64 MiB RSS) is not met under
# TCG.
#
# usage: scripts/bench-density.sh   (needs the guest: scripts/build-guest.sh)
#        N=4 LODGE_BIN=target/debug/lodge scripts/bench-density.sh
#        MODES="default qemu" picks what is compared (the first is "new",
#        the last "old").
set -euo pipefail
cd "$(dirname "$0")/.."
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
n="${N:-10}"
rounds="${ROUNDS:-1}"
# Free page reporting as the lodge kernel picks it (its pageblock order).
old_env="LODGE_KERNEL_ARGS=page_reporting.page_reporting_order=10"
read -r -a modes <<<"${MODES:-default old:$old_env}"
lodge="${LODGE_BIN:-$(./scripts/build-release.sh)}"
work="$(mktemp -d /tmp/lodge-bench-density.XXXXXX)"
# Benchmarks never touch the host's network.
export LODGE_NETWORK=off
export LODGE_LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))"
export LODGE_BASE_URL="http://$LODGE_LISTEN"
export LODGE_OVERSUB_CPU="${LODGE_OVERSUB_CPU:-32}"
daemon=""
label() { echo "${1%%:*}"; }
start_daemon() { # MODE DIR
    local mode="$1" envs=() kv
    export LODGE_DATA_DIR="$2"
    case "$mode" in
    default) ;;
    *:*)
        IFS=';' read -r -a kvs <<<"${mode#*:}"
        for kv in "${kvs[@]}"; do envs+=("$kv"); done
        ;;
    *) envs+=("LODGE_TCG_TB_SIZE=$mode") ;;
    esac
    env -u LODGE_TCG_TB_SIZE -u LODGE_KERNEL_ARGS "${envs[@]}" \
        "$lodge" serve >"$2.log" 2>&1 &
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
# kB resident in QEMU's guest RAM, its code cache, its other anonymous
# memory, the guest kernel and initrd files, and every other file.
split() { # PID
    awk '/^[0-9a-f]+-[0-9a-f]+ / { perms = $2; path = $6; next }
         $1 == "Size:" {
            ram = (path ~ /memory\.ram$/) || (path == "" && $2 >= 262144 && perms !~ /x/)
            code = (path == "" && perms ~ /x/)
            boot = (path ~ /\/(vmlinux|vmlinuz|initrd\.img)$/) }
         $1 == "Rss:" { if (ram) g += $2; else if (code) c += $2; else if (boot) b += $2; else if (path !~ /^\//) a += $2; else f += $2 }
         END { printf "%d %d %d %d %d\n", g, c, a, b, f }' "/proc/$1/smaps"
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

# Sums over rounds, per mode label: RSS PSS private monRSS monPSS qemuRSS
# ram code anon boot files boot-seconds.
declare -A result
for round in $(seq "$rounds"); do
    for mode in "${modes[@]}"; do
        name=$(label "$mode")
        start_daemon "$mode" "$work/data-$name-$round"
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
        # least 10 s after the last guest answered (free page reporting
        # waits 2 s), at most 2 minutes.
        sleep 10
        prev=$(total_rss)
        for _ in $(seq 24); do
            sleep 5
            now=$(total_rss)
            [ $(((now > prev ? now - prev : prev - now) / 1024)) -lt "$n" ] && break
            prev=$now
        done
        v=(0 0 0 0 0 0 0 0 0 0 0 "$booted")
        for id in $ids; do
            { read -r m; read -r p; } < <(pids "$id")
            for q in $m $p; do
                v[0]=$((v[0] + $(rollup "$q" Rss)))
                v[1]=$((v[1] + $(rollup "$q" Pss)))
                v[2]=$((v[2] + $(rollup "$q" Private_Clean) + $(rollup "$q" Private_Dirty)))
            done
            v[3]=$((v[3] + $(rollup "$m" Rss)))
            v[4]=$((v[4] + $(rollup "$m" Pss)))
            v[5]=$((v[5] + $(rollup "$p" Rss)))
            read -r g c a b f < <(split "$p")
            v[6]=$((v[6] + g)); v[7]=$((v[7] + c)); v[8]=$((v[8] + a))
            v[9]=$((v[9] + b)); v[10]=$((v[10] + f))
        done
        echo "$name (round $round): $n idle VMs (booted in ${booted} s), per VM (MiB): RSS $(mib "${v[0]}" "$n") PSS $(mib "${v[1]}" "$n") private $(mib "${v[2]}" "$n"); monitor RSS $(mib "${v[3]}" "$n") PSS $(mib "${v[4]}" "$n"); QEMU RSS $(mib "${v[5]}" "$n"): guest RAM $(mib "${v[6]}" "$n"), TCG code $(mib "${v[7]}" "$n"), other anonymous $(mib "${v[8]}" "$n"), kernel+initrd files $(mib "${v[9]}" "$n"), binary+libraries $(mib "${v[10]}" "$n")"
        read -r -a sum <<<"${result[$name]:-0 0 0 0 0 0 0 0 0 0 0 0}"
        for k in "${!v[@]}"; do sum[k]=$((sum[k] + v[k])); done
        result[$name]="${sum[*]}"
        stop_daemon
    done
done

if [ "${#modes[@]}" -ge 2 ]; then
    new=$(label "${modes[0]}") old=$(label "${modes[-1]}")
    read -r -a a <<<"${result[$new]}"
    read -r -a b <<<"${result[$old]}"
    k=$((n * rounds))
    echo "ratio $new/$old per idle VM ($rounds round(s)): RSS $(ratio "${a[0]}" "${b[0]}") ($(mib "${a[0]}" "$k") vs $(mib "${b[0]}" "$k") MiB), PSS $(ratio "${a[1]}" "${b[1]}") ($(mib "${a[1]}" "$k") vs $(mib "${b[1]}" "$k")), private $(ratio "${a[2]}" "${b[2]}") ($(mib "${a[2]}" "$k") vs $(mib "${b[2]}" "$k")); monitor RSS $(mib "${a[3]}" "$k") vs $(mib "${b[3]}" "$k"), PSS $(mib "${a[4]}" "$k") vs $(mib "${b[4]}" "$k"); QEMU RSS $(mib "${a[5]}" "$k") vs $(mib "${b[5]}" "$k"); guest RAM $(mib "${a[6]}" "$k") vs $(mib "${b[6]}" "$k"), TCG code $(mib "${a[7]}" "$k") vs $(mib "${b[7]}" "$k"), other anonymous $(mib "${a[8]}" "$k") vs $(mib "${b[8]}" "$k"), kernel+initrd files $(mib "${a[9]}" "$k") vs $(mib "${b[9]}" "$k"); boot of all $(awk -v x="${a[11]}" -v r="$rounds" 'BEGIN {printf "%.0f", x / r}') vs $(awk -v x="${b[11]}" -v r="$rounds" 'BEGIN {printf "%.0f", x / r}') s (goal ≤ 64 MiB RSS per VM)"
fi
