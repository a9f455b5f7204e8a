#!/usr/bin/env bash
# Benchmark (not a test) of wake-on-traffic against a cold start, side by
# side in one run, both measured as a client sees them through lodge's
# ingress:
#
# - cold: `lodge run -d -p PORT:80` of a busybox httpd → the first HTTP
#   200 through the ingress on 127.0.0.1:PORT (polled with curl);
# - wake: the same instance put in standby → one request through the
#   ingress, which holds it while the instance is restored and then
#   forwards it: the time to its 200.
#
# RUNS repetitions (default 7), alternating cold and wake on the same
# instance; median and p90 of each and the ratio wake/cold (goal ≤ 0.25,
# issue 15).
#
# Nothing touches the host's network: as ingress_e2e and auto_standby_e2e
# do, the script builds two network namespaces joined by a veth
# (TEST-NET-2 addresses; the inner one's default route is lodge's uplink)
# and re-executes itself inside one; the daemon, its ingress proxy (on
# 127.0.0.1 there), QEMU and curl all live there, and both namespaces die
# at the end with whatever still runs in them.
#
# usage: scripts/bench-wake.sh   (root; the guest from scripts/build-guest.sh;
#        LODGE_BIN=path/to/lodge skips the release build; RUNS=N)
set -euo pipefail
cd "$(dirname "$0")/.."
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
runs="${RUNS:-7}"

if [ -z "${BENCH_WAKE_INNER:-}" ]; then
    [ "$(id -u)" = 0 ] || { echo "bench-wake: needs root (network namespaces)" >&2; exit 1; }
    command -v curl >/dev/null || { echo "bench-wake: curl missing (scripts/install-deps.sh)" >&2; exit 1; }
    lodge="${LODGE_BIN:-$(./scripts/build-release.sh)}"
    host="lodge-bench-wake-$$-h" out="lodge-bench-wake-$$-o"
    cleanup() {
        set +e
        for ns in "$host" "$out"; do
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
            ip netns del "$ns" 2>/dev/null
        done
    }
    trap cleanup EXIT
    ip netns add "$host"
    ip netns add "$out"
    ip link add up0 netns "$host" type veth peer name wan0 netns "$out"
    ip -n "$host" link set lo up
    ip -n "$out" link set lo up
    ip -n "$host" addr add 198.51.100.2/24 dev up0
    ip -n "$host" link set up0 up
    ip -n "$out" addr add 198.51.100.1/24 dev wan0
    ip -n "$out" link set wan0 up
    ip -n "$host" route add default via 198.51.100.1
    BENCH_WAKE_INNER=1 LODGE_BIN="$lodge" RUNS="$runs" ip netns exec "$host" "$0"
    exit 0
fi

lodge="$LODGE_BIN"
work=$(mktemp -d /tmp/lodge-bench-wake.XXXXXX)
daemon=""
cleanup_inner() {
    set +e
    if [ -n "$daemon" ]; then
        "$lodge" rm -f $("$lodge" ps -a -q) >/dev/null 2>&1
        kill "$daemon" 2>/dev/null
        wait "$daemon" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup_inner EXIT
export LODGE_DATA_DIR="$work/data" LODGE_LISTEN=127.0.0.1:9200
export LODGE_BASE_URL=http://127.0.0.1:9200
export LODGE_NETWORK=on LODGE_DNS=198.51.100.1 LODGE_INGRESS_ADDRESS=127.0.0.1
"$lodge" serve >"$work/serve.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do curl -sf "$LODGE_BASE_URL/health" >/dev/null && break; sleep 0.1; done
curl -sf "$LODGE_BASE_URL/health" >/dev/null || { echo "bench-wake: the daemon did not start" >&2; cat "$work/serve.log" >&2; exit 1; }

now() { date +%s%N; }
ms() { echo $(( ($(now) - $1) / 1000000 )); }
rootfs="$LODGE_SYSTEM_DIR/rootfs-busybox"
server='mkdir -p /www && echo hello > /www/index.html && exec busybox httpd -f -p 80 -h /www'
# The first 200 through the ingress at PORT (a connection the guest
# refuses, a 502 while it boots: try again at once).
first_200() { # PORT DEADLINE_S
    local end=$(( $(date +%s) + $2 ))
    until curl -s -o /dev/null -w '%{http_code}' --max-time 30 "http://127.0.0.1:$1/" | grep -q '^200$'; do
        [ "$(date +%s)" -lt "$end" ] || { echo "bench-wake: no 200 on port $1 in $2 s" >&2; diagnose; exit 1; }
        sleep 0.01
    done
}
diagnose() {
    tail -20 "$work/serve.log" >&2
    for id in $("$lodge" ps -a -q); do "$lodge" logs "$id" 2>&1 | tail -20 >&2; done
    tail -20 "$work/data/ingress/proxy.log" >&2 2>/dev/null || true
}
state() { "$lodge" inspect "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }

cold=() wake=()
for i in $(seq "$runs"); do
    port=$((9300 + i))
    t0=$(now)
    "$lodge" run -d --name "web$i" --cpus 1 --memory 256MB --overlay-size 64MB \
        --rootfs "$rootfs" -p "$port:80" sh -c "$server" >/dev/null
    first_200 "$port" 120
    cold+=("$(ms "$t0")")
    "$lodge" standby "web$i" >/dev/null
    [ "$(state "web$i")" = Standby ] || { echo "bench-wake: web$i is not in standby" >&2; exit 1; }
    t0=$(now)
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 60 "http://127.0.0.1:$port/")
    wake+=("$(ms "$t0")")
    [ "$code" = 200 ] || { echo "bench-wake: the woken request answered $code" >&2; tail -20 "$work/serve.log" >&2; exit 1; }
    [ "$(state "web$i")" = Running ] || { echo "bench-wake: web$i did not wake" >&2; exit 1; }
    echo "run $i: cold run→first response ${cold[-1]} ms, standby→first response ${wake[-1]} ms"
    "$lodge" rm -f "web$i" >/dev/null
done

python3 - "${cold[*]}" "${wake[*]}" <<'PY'
import sys
cold, wake = ([float(x) for x in a.split()] for a in sys.argv[1:3])
def pct(v, p):
    v = sorted(v)
    # nearest rank
    k = max(0, min(len(v) - 1, -(-p * len(v) // 100) - 1))
    return v[int(k)]
cm, cp = pct(cold, 50), pct(cold, 90)
wm, wp = pct(wake, 50), pct(wake, 90)
print(f"cold run→first response through the ingress: median {cm:.0f} ms, p90 {cp:.0f} ms")
print(f"standby→first response (wake on traffic):     median {wm:.0f} ms, p90 {wp:.0f} ms")
print(f"ratio wake/cold: median {wm/cm:.2f}, p90 {wp/cp:.2f} (goal <= 0.25)")
PY
