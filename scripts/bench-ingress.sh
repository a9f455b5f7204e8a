#!/usr/bin/env bash
# Benchmark (not a test) of lodge's ingress against Debian's caddy as a
# reverse proxy, side by side in one run, to the same upstream on loopback
# (a third process, caddy's `respond`, so neither proxy shares a process
# with it and no VM is the bottleneck): requests/s and p99 latency with
# wrk, and the ratios lodge/caddy.
#
# lodge's ingress routes to instances, so the script boots one (busybox,
# `sleep`) with networking off and points its record's address at
# 127.0.0.1: the proxy then resolves, tracks activity and forwards exactly
# as for a guest. Everything runs in a network namespace with only
# loopback, which dies at the end with whatever still runs in it.
#
# usage: scripts/bench-ingress.sh [SECONDS] [CONNECTIONS]   (root; the guest
#        from scripts/build-guest.sh; LODGE_BIN=path/to/lodge skips the
#        release build)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
conns="${2:-64}"
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"

if [ -z "${BENCH_INGRESS_INNER:-}" ]; then
    [ "$(id -u)" = 0 ] || { echo "bench-ingress: needs root (a network namespace)" >&2; exit 1; }
    for b in caddy wrk; do
        command -v "$b" >/dev/null || { echo "bench-ingress: $b missing (scripts/install-deps.sh)" >&2; exit 1; }
    done
    lodge="${LODGE_BIN:-$(./scripts/build-release.sh)}"
    ns="lodge-bench-ingress-$$"
    cleanup() {
        set +e
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    }
    trap cleanup EXIT
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    BENCH_INGRESS_INNER=1 LODGE_BIN="$lodge" ip netns exec "$ns" "$0" "$secs" "$conns"
    exit 0
fi

lodge="$LODGE_BIN"
work=$(mktemp -d /tmp/lodge-bench-ingress.XXXXXX)
trap 'rm -rf "$work"' EXIT
export LODGE_DATA_DIR="$work/data" LODGE_LISTEN=127.0.0.1:9100 LODGE_NETWORK=off
export LODGE_INGRESS_ADDRESS=127.0.0.1 LODGE_BASE_URL=http://127.0.0.1:9100
upstream=9101 caddy_port=9102 lodge_port=9103
# caddy's autosave and storage stay in the scratch dir.
export XDG_CONFIG_HOME="$work/xdg-config" XDG_DATA_HOME="$work/xdg-data"

cat > "$work/upstream.caddy" <<EOF
{
	admin off
	auto_https off
}
# Any Host: lodge forwards the client's (bench.test), caddy rewrites it.
http://:$upstream {
	bind 127.0.0.1
	respond "hello from the upstream" 200
}
EOF
cat > "$work/proxy.caddy" <<EOF
{
	admin off
	auto_https off
}
http://127.0.0.1:$caddy_port {
	reverse_proxy 127.0.0.1:$upstream
}
EOF
caddy run --config "$work/upstream.caddy" --adapter caddyfile > "$work/upstream.log" 2>&1 &
caddy run --config "$work/proxy.caddy" --adapter caddyfile > "$work/caddy.log" 2>&1 &
"$lodge" serve > "$work/serve.log" 2>&1 &
for _ in $(seq 100); do curl -sf "$LODGE_BASE_URL/health" >/dev/null && break; sleep 0.1; done

id=$("$lodge" run -d --name bench --cpus 1 --memory 256MB \
    --rootfs "$LODGE_SYSTEM_DIR/rootfs-busybox" sleep 100000)
"$lodge" wait bench Running >/dev/null
# The instance's address, as if it had one: the upstream on loopback.
meta="$LODGE_DATA_DIR/guests/$id/metadata.json"
python3 - "$meta" <<'EOF'
import json, sys
p = sys.argv[1]
m = json.load(open(p))
m["network"] = {"ip": "127.0.0.1", "mac": "02:4c:00:00:00:01"}
json.dump(m, open(p, "w"))
EOF
"$lodge" ingress create bench --hostname bench.test --port "$upstream" \
    --host-port "$lodge_port" --name bench >/dev/null
curl -sf -H 'Host: bench.test' "http://127.0.0.1:$lodge_port/" | grep -q upstream
curl -sf "http://127.0.0.1:$caddy_port/" | grep -q upstream

run() { # name url host → "rps p99_ms"
    local out
    out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency -H "Host: $3" "$2")
    local rps p99
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
    echo "$rps $p99"
}
echo "wrk -t2 -c$conns -d${secs}s --latency, alternating, 2 rounds each"
declare -a lr lp cr cp
for round in 1 2; do
    read -r r p < <(run lodge "http://127.0.0.1:$lodge_port/" bench.test); lr+=("$r"); lp+=("$p")
    printf 'round %s lodge: %10.0f req/s  p99 %6.2f ms\n' "$round" "$r" "$p"
    read -r r p < <(run caddy "http://127.0.0.1:$caddy_port/" 127.0.0.1); cr+=("$r"); cp+=("$p")
    printf 'round %s caddy: %10.0f req/s  p99 %6.2f ms\n' "$round" "$r" "$p"
done
python3 - "${lr[*]}" "${lp[*]}" "${cr[*]}" "${cp[*]}" <<'EOF'
import sys
lr, lp, cr, cp = ([float(x) for x in a.split()] for a in sys.argv[1:5])
mean = lambda v: sum(v) / len(v)
print(f"lodge: {mean(lr):.0f} req/s, p99 {mean(lp):.2f} ms")
print(f"caddy: {mean(cr):.0f} req/s, p99 {mean(cp):.2f} ms")
print(f"ratio lodge/caddy: throughput {mean(lr)/mean(cr):.2f}x (goal >= 1.0), p99 {mean(lp)/mean(cp):.2f}x (goal <= 1.0)")
EOF
"$lodge" ingress rm bench >/dev/null
"$lodge" rm -f bench >/dev/null
