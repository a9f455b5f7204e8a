#!/usr/bin/env bash
# Benchmark (not a test): what metrics add to the daemon's CPU during a
# boot storm. Goal (issue 19): ≤ 1% over the same storm with metrics off.
#
# Two daemons side by side, each on a data dir and port of its own
# (networking off): one as shipped, one with LODGE_METRICS=off (no
# /metrics route, nothing counted). A storm is COUNT (default 10)
# instances created at once through the API (`sleep 600` on the busybox
# rootfs), measured from just before the creates until every one is
# Running (a `GET /instances` every half second, the same on both sides).
# During the metrics side's storms /metrics is scraped at the start and
# then every SCRAPE_INTERVAL seconds (default 15, Prometheus' default), so
# the cost of serving scrapes is in the number. Between storms the
# instances are deleted (not measured).
#
# Each daemon first runs one storm that is not counted (first-use costs),
# then the sides alternate ABBA over ROUNDS pairs (default 2: on, off,
# off, on), so neither always runs on the warmer host. The number compared
# is the daemon's CPU time in ns (its threads' run time from
# /proc/PID/task/*/schedstat; a sampler keeps the last value of threads
# that end, such as tokio's idle blocking threads; /proc/PID/stat counts
# 10 ms clock ticks, 10% of a storm's ~100 ms), which other processes'
# load does not inflate as much as wall time; the QEMU processes and
# monitors are not the daemon and are not counted. A busy host still
# moves it by more than 1% between storms, so the script also measures
# the metrics' own share directly: the daemon's CPU per scrape with COUNT
# instances running (SCRAPES, default 1000, on one connection), times
# the scrapes per storm, against the metrics-off storm.
#
# Cleanup ends only this script's own processes, by PID: its two daemons,
# and the monitors and VMMs recorded in its own data dirs' monitor.json
# files (checked against their command lines first).
#
# usage: scripts/bench-boot-storm.sh   (needs the guest: scripts/build-guest.sh)
#        LODGE_BIN=target/release/lodge COUNT=10 ROUNDS=3 SCRAPES=1000 scripts/bench-boot-storm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
count="${COUNT:-10}"
rounds="${ROUNDS:-2}"
interval="${SCRAPE_INTERVAL:-15}"
scrapes_n="${SCRAPES:-1000}"
lodge="${LODGE_BIN:-$(./scripts/build-release.sh)}"
work="$(mktemp -d /tmp/lodge-bench-storm.XXXXXX)"
rootfs="$LODGE_SYSTEM_DIR/rootfs-busybox"
export LODGE_NETWORK=off
export LODGE_OVERSUB_CPU=64

declare -A pid url token
kill_own() {
    local p=$1
    [ -n "$p" ] || return 0
    if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$work"; then
        kill "$p" 2>/dev/null || true
    fi
}
cleanup() {
    set +e
    for f in "$work"/*/guests/*/logs/monitor.json; do
        [ -f "$f" ] || continue
        for key in child_pid pid; do
            kill_own "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$f" "$key" 2>/dev/null)"
        done
    done
    [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null
    for side in on off; do
        if [ -n "${pid[$side]:-}" ]; then
            kill "${pid[$side]}" 2>/dev/null
            wait "${pid[$side]}" 2>/dev/null
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT

for side in on off; do
    mkdir -p "$work/$side"
    listen="127.0.0.1:$((20000 + RANDOM % 20000))"
    if [ "$side" = off ]; then metrics=off; else metrics=on; fi
    LODGE_METRICS=$metrics LODGE_DATA_DIR="$work/$side" LODGE_LISTEN="$listen" \
        "$lodge" serve >"$work/$side.log" 2>&1 &
    pid[$side]=$!
    url[$side]="http://$listen"
    for _ in $(seq 100); do curl -sf "http://$listen/health" >/dev/null && break; sleep 0.1; done
    token[$side]=$(LODGE_DATA_DIR="$work/$side" LODGE_BASE_URL="http://$listen" "$lodge" token)
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${token[off]}" "${url[off]}/metrics")
[ "$code" = 404 ] || { echo "LODGE_METRICS=off still serves /metrics ($code)" >&2; exit 1; }

# The sampler: every 0.1 s, the run time of every thread of each daemon
# (/proc/PID/task/TID/schedstat, ns), written as "TID NS" lines plus
# "dead NS", the total of threads gone since (their last value).
cat >"$work/sampler.py" <<'PY'
import os, sys, time
out, pids = sys.argv[1], sys.argv[2:]
last = {p: {} for p in pids}
dead = {p: 0 for p in pids}
while True:
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        cur = {}
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    cur[t] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        dead[p] += sum(v for t, v in last[p].items() if t not in cur)
        last[p] = cur
        tmp = f"{out}/threads.{p}.tmp"
        with open(tmp, "w") as f:
            f.write(f"dead {dead[p]}\n")
            f.writelines(f"{t} {v}\n" for t, v in cur.items())
        os.replace(tmp, f"{out}/threads.{p}")
    time.sleep(0.1)
PY
python3 "$work/sampler.py" "$work" "${pid[on]}" "${pid[off]}" &
sampler=$!
for _ in $(seq 100); do
    [ -f "$work/threads.${pid[on]}" ] && [ -f "$work/threads.${pid[off]}" ] && break
    sleep 0.1
done
# cpu PID: the daemon's CPU time so far in ns (printed with %.0f: mawk's
# %d stops at 2^31 ns): each thread's run time now
# or, if it has ended since the sampler saw it, then, plus the threads
# that ended before.
cpu() {
    for f in /proc/"$1"/task/*/schedstat; do
        { read -r ns _ <"$f"; } 2>/dev/null && echo "${f#/proc/$1/task/} $ns"
    done | sed 's|/schedstat||' | cat - "$work/threads.$1" |
        awk '$1 == "dead" { d = $2; next } { if ($2 > m[$1]) m[$1] = $2 } END { for (t in m) s += m[t]; printf "%.0f", s + d }'
}
api() { # SIDE METHOD PATH [BODY]
    curl -sf -X "$2" -H "Authorization: Bearer ${token[$1]}" -H 'Content-Type: application/json' \
        ${4:+--data "$4"} "${url[$1]}$3"
}

# storm SIDE N: prints "cpu_ns wall_ms scrapes".
storm() {
    local side=$1 n=$2 ids=() scraper="" scrapes=0
    local t0 w0 t1 w1
    w0=$(date +%s%N)
    t0=$(cpu "${pid[$side]}")
    if [ "$side" = on ]; then
        : >"$work/scrapes"
        (while :; do api on GET /metrics >/dev/null; echo x >>"$work/scrapes"; sleep "$interval"; done) &
        scraper=$!
    fi
    local jobs=()
    for i in $(seq "$count"); do
        api "$side" POST /instances "{\"name\":\"s$n-$i\",\"rootfs\":\"$rootfs\",\"vcpus\":1,\"size\":\"128MB\",\"overlay_size\":\"64MB\",\"cmd\":[\"sleep\",\"600\"]}" \
            >"$work/create.$i" &
        jobs+=($!)
    done
    wait "${jobs[@]}"
    for i in $(seq "$count"); do
        ids+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$work/create.$i")")
    done
    # One list every half second (not a long-poll per instance: the wait
    # re-derives the state 20 times a second, which would make the
    # storm's CPU follow its wall time).
    local running=0 deadline=$((SECONDS + 600))
    while [ "$running" -lt "$count" ]; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "storm $n: not all Running after 600 s" >&2; exit 1; }
        sleep 0.5
        running=$(api "$side" GET /instances | jq '[.[] | select(.state == "Running")] | length')
    done
    t1=$(cpu "${pid[$side]}")
    w1=$(date +%s%N)
    if [ -n "$scraper" ]; then
        kill "$scraper"
        wait "$scraper" 2>/dev/null || true
        scrapes=$(wc -l <"$work/scrapes")
        rm -f "$work/scrapes"
    fi
    if [ "${3:-}" = scrape-cost ]; then
        # SCRAPES scrapes with the storm's instances running, one connection.
        local args=() s0 s1
        for _ in $(seq "$scrapes_n"); do args+=(-o /dev/null "${url[on]}/metrics"); done
        s0=$(cpu "${pid[on]}")
        curl -sf -H "Authorization: Bearer ${token[on]}" "${args[@]}"
        s1=$(cpu "${pid[on]}")
        echo "$((s1 - s0))" >"$work/scrape-cost"
    fi
    jobs=()
    for id in "${ids[@]}"; do
        api "$side" DELETE "/instances/$id" >/dev/null &
        jobs+=($!)
    done
    wait "${jobs[@]}"
    echo "$((t1 - t0)) $(((w1 - w0) / 1000000)) $scrapes"
}

declare -A cpu wall
cpu[on]=0 cpu[off]=0 wall[on]=0 wall[off]=0
n=0
echo "boot storms of $count instances, $rounds ABBA pairs, a scrape every ${interval}s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for side in on off; do
    n=$((n + 1))
    storm "$side" "$n" >"$work/result"
    read -r c w s <"$work/result"
    printf 'storm %2d  metrics %-3s  daemon CPU %5d ms  wall %6d ms  (warm-up, not counted)\n' "$n" "$side" "$((c / 1000000))" "$w"
done
scrapes_on=0
for r in $(seq "$rounds"); do
    for side in on off off on; do
        n=$((n + 1))
        storm "$side" "$n" >"$work/result"
        read -r c w s <"$work/result"
        cpu[$side]=$((cpu[$side] + c))
        [ "$side" = on ] && scrapes_on=$((scrapes_on + s))
        wall[$side]=$((wall[$side] + w))
        printf 'storm %2d  metrics %-3s  daemon CPU %5d ms  wall %6d ms%s\n' \
            "$n" "$side" "$((c / 1000000))" "$w" "$([ "$side" = on ] && echo "  ($s scrapes)")"
    done
done
n=$((n + 1))
storm on "$n" scrape-cost >"$work/result"
scrape_ns=$(cat "$work/scrape-cost")
storms=$((rounds * 2))
awk -v st="$scrape_ns" -v sn="$scrapes_n" -v sc="$scrapes_on" -v count="$count" -v on="${cpu[on]}" -v off="${cpu[off]}" -v n="$storms" -v won="${wall[on]}" -v woff="${wall[off]}" 'BEGIN {
    printf "metrics on:  daemon CPU %.1f ms per storm (wall %.1f s)\n", on / 1e6 / n, won / 1000 / n
    printf "metrics off: daemon CPU %.1f ms per storm (wall %.1f s)\n", off / 1e6 / n, woff / 1000 / n
    if (off > 0) printf "measured: metrics on uses %+.1f%% daemon CPU per storm (noise: storms of one side differ by more)\n", (on - off) * 100 / off
    cost = st / 1e6 / sn
    per = sc / n
    if (off > 0) printf "metrics share: %.3f ms daemon CPU per scrape with %d instances running x %.1f scrapes per storm = %.2f ms, %.2f%% of a metrics-off storm (goal: <= 1%%)\n", cost, count, per, cost * per, cost * per * 100 / (off / 1e6 / n)
}'
echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
