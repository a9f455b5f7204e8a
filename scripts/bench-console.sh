#!/usr/bin/env bash
# Guest console throughput, the fast console (a pipe lodge-init relays to a
# virtio-serial port) against the UART (ttyS0), side by side in one VM
# (issue 17; target: fast >= 40x the UART and >= 20 MB/s under TCG).
#
# One VM with LODGE_CONSOLE=virtio (the default): the workload first builds
# a 1 MiB file of log lines in the guest's RAM (untimed), then writes it
# FAST_MB times to its stdout (the fast console) and UART_MB times to
# /dev/ttyS0 (the serial console, output processing already off), timing
# each in the guest from /proc/uptime. Both streams land in app.log through
# lodge's monitor with its usual backpressure, so the time includes the
# whole pipeline. The same `cat` into /dev/null (the guest's own cost of
# producing the bytes under emulation, the ceiling) is shown for scale.
# Afterwards the bytes in app.log are counted, so a stream
# that lost bytes cannot look fast.
#
#   scripts/bench-console.sh            # FAST_MB=64 UART_MB=2
#   LODGE=target/debug/lodge scripts/bench-console.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FAST_MB=${FAST_MB:-64}
UART_MB=${UART_MB:-2}
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
lodge="${LODGE:-$(./scripts/build-release.sh)}"
work="$(mktemp -d /tmp/lodge-bench-console.XXXXXX)"
export LODGE_DATA_DIR="$work/data"
export LODGE_NETWORK=off
export LODGE_CONSOLE=virtio
# Keep every byte: rotation at 64 MiB, enough segments for the whole run.
export LODGE_LOG_MAX_SIZE=64MiB LODGE_LOG_MAX_FILES=20
export LODGE_LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))"
export LODGE_BASE_URL="http://$LODGE_LISTEN"

daemon=""
cleanup() {
    set +e
    if [ -n "$daemon" ]; then
        "$lodge" rm -f bench-console >/dev/null 2>&1
        kill "$daemon" 2>/dev/null
        wait "$daemon" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$lodge" serve >"$work/serve.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do "$lodge" ps >/dev/null 2>&1 && break; sleep 0.1; done

# In the guest: 1 MiB of 64-byte lines in /tmp (RAM), then the timed runs.
script='
set -e
yes "console-bench 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJK" | head -c 1048576 > /tmp/mib
up() { cut -d" " -f1 /proc/uptime; }
t0=$(up); i=0; while [ $i -lt '"$FAST_MB"' ]; do cat /tmp/mib; i=$((i+1)); done; t1=$(up)
t2=$(up); i=0; while [ $i -lt '"$UART_MB"' ]; do cat /tmp/mib > /dev/ttyS0; i=$((i+1)); done; t3=$(up)
t4=$(up); i=0; while [ $i -lt '"$FAST_MB"' ]; do cat /tmp/mib > /dev/null; i=$((i+1)); done; t5=$(up)
echo "BENCH fast '"$FAST_MB"' $t0 $t1"
echo "BENCH uart '"$UART_MB"' $t2 $t3"
echo "BENCH null '"$FAST_MB"' $t4 $t5"
'
id=$("$lodge" run -d --name bench-console --cpus 1 --memory 256MB \
    --rootfs "$LODGE_SYSTEM_DIR/rootfs-busybox" sh -c "$script")
state() { "$lodge" inspect "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }
until [ "$(state "$id")" = Stopped ]; do sleep 0.5; done

logs="$LODGE_DATA_DIR/guests/$id/logs"
cat $(ls "$logs"/app.log.* 2>/dev/null | sort) "$logs/app.log" > "$work/all.log"
lines=$(grep -c '^console-bench ' "$work/all.log" || true)
want=$(( (FAST_MB + UART_MB) * 16384 ))
grep '^BENCH ' "$work/all.log"
python3 - "$work/all.log" "$lines" "$want" <<'EOF'
import sys
path, lines, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = open(path, 'rb').read()
assert b'\0' not in data, "NUL byte in app.log"
rates = {}
for line in data.decode('utf-8', 'replace').splitlines():
    if line.startswith('BENCH '):
        _, kind, mb, t0, t1 = line.split()
        secs = float(t1) - float(t0)
        rates[kind] = int(mb) * 1.048576 / max(secs, 0.01)
        print(f"{kind}: {mb} MiB in {secs:.2f} s = {rates[kind]:.2f} MB/s")
print(f"lines in app.log: {lines} of {want} written" + ("" if lines == want else "  (MISMATCH)"))
if lines != want:
    sys.exit(1)
print(f"ratio fast/uart: {rates['fast'] / rates['uart']:.1f}x (target >= 40x; fast target >= 20 MB/s)")
EOF
