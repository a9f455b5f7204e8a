#!/usr/bin/env bash
# Daemon CPU of following one busy console with 1 and with N followers
# (issue 17, item 2: many followers of one instance share one reader in
# the daemon, see crates/lodge/src/api/logs/hub.rs).
#
# Two VMs in turn, each printing MB MiB of 64-byte lines to its fast
# console after a pause in which the followers (`lodge logs -f --tail 0`,
# through the API) attach. The daemon's user+system CPU time is read from
# /proc before the first follower attaches and after the last one ended
# (they end with the VM), so boot and teardown are in both numbers alike.
# Each follower's output is checked to hold every line.
#
#   scripts/bench-followers.sh          # MB=16 N=10
#   LODGE=target/debug/lodge scripts/bench-followers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${MB:-16}
N=${N:-10}
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
lodge="${LODGE:-$(./scripts/build-release.sh)}"
work="$(mktemp -d /tmp/lodge-bench-followers.XXXXXX)"
export LODGE_DATA_DIR="$work/data"
export LODGE_NETWORK=off
export LODGE_CONSOLE=virtio
export LODGE_LOG_MAX_SIZE=64MiB LODGE_LOG_MAX_FILES=20
export LODGE_LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))"
export LODGE_BASE_URL="http://$LODGE_LISTEN"

daemon=""
cleanup() {
    set +e
    if [ -n "$daemon" ]; then
        for name in bench-f1 bench-fn; do "$lodge" rm -f "$name" >/dev/null 2>&1; done
        kill "$daemon" 2>/dev/null
        wait "$daemon" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$lodge" serve >"$work/serve.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do "$lodge" ps >/dev/null 2>&1 && break; sleep 0.1; done

cpu() { awk '{ print ($14 + $15) / '"$(getconf CLK_TCK)"' }' "/proc/$daemon/stat"; }

script='
yes "follow-bench 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJK" | head -c 1048576 > /tmp/mib
sleep 8
i=0; while [ $i -lt '"$MB"' ]; do cat /tmp/mib; i=$((i+1)); done
'
want=$((MB * 16384))

# run NAME FOLLOWERS: prints "FOLLOWERS CPU-SECONDS WALL-SECONDS"
run() {
    local name=$1 count=$2 pids=() c0 c1 t0 t1 id
    c0=$(cpu); t0=$(date +%s.%N)
    id=$("$lodge" run -d --name "$name" --cpus 1 --memory 256MB \
        --rootfs "$LODGE_SYSTEM_DIR/rootfs-busybox" sh -c "$script")
    for k in $(seq "$count"); do
        "$lodge" logs -f --tail 0 "$id" > "$work/$name.$k" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    c1=$(cpu); t1=$(date +%s.%N)
    local logs="$LODGE_DATA_DIR/guests/$id/logs"
    in_log=$(cat $(ls "$logs"/app.log.* 2>/dev/null | sort) "$logs/app.log" | grep -c '^follow-bench ' || true)
    for k in $(seq "$count"); do
        got=$(grep -c '^follow-bench ' "$work/$name.$k" || true)
        # Every line app.log has (at least the MB MiB written).
        [ "$got" -eq "$in_log" ] && [ "$got" -ge "$want" ] \
            || { echo "$name follower $k: $got lines, app.log $in_log, written >= $want" >&2; exit 1; }
    done
    "$lodge" rm -f "$name" >/dev/null
    python3 -c "print($count, f'{$c1 - $c0:.2f}', f'{$t1 - $t0:.1f}')"
}

one=$(run bench-f1 1)
many=$(run bench-fn "$N")
python3 - "$one" "$many" "$MB" <<'EOF'
import sys
(n1, c1, w1), (nn, cn, wn) = (s.split() for s in sys.argv[1:3])
mb = sys.argv[3]
print(f"{mb} MiB console stream per VM")
print(f"daemon CPU with {n1} follower:  {float(c1):.2f} s (wall {w1} s)")
print(f"daemon CPU with {nn} followers: {float(cn):.2f} s (wall {wn} s)")
print(f"ratio {nn} vs {n1}: {float(cn) / max(float(c1), 0.01):.2f}x")
EOF
