#!/usr/bin/env bash
# Benchmark (not a test): volumes, each number side by side in one run.
#
# - Guest I/O: sequential write (dd, 1 MiB blocks, fsync) then read (page
#   cache dropped first) of 256 MiB inside the guest, on a volume (its own
#   virtio disk, ext4) against the guest's root (overlayfs over the
#   instance's overlay disk, ext4). Three alternating rounds, medians; the
#   ratio volume/root is the target (>= 0.9: the volume path adds nothing).
# - Hot attach: POST /instances/{id}/volumes/{vol} on a running VM until it
#   answers (the disk is plugged and mounted in the guest), median of three,
#   against a cold boot of the same instance (start until the guest agent
#   answers an exec), median of three.
#
# usage: scripts/bench-volumes.sh   (needs the guest: scripts/build-guest.sh)
#   LODGE_BIN=path/to/lodge (default target/debug/lodge, built if missing)
#   ROUNDS=N rounds of each measurement (default 3; more on a busy host)
#   IO_ONLY=1 stops after the I/O rounds
set -euo pipefail
cd "$(dirname "$0")/.."
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
lodge="${LODGE_BIN:-$PWD/target/debug/lodge}"
[ -x "$lodge" ] || cargo build -q -p lodge
work="$(mktemp -d /tmp/lodge-bench-volumes.XXXXXX)"
export LODGE_DATA_DIR="$work/data"
# Benchmarks never touch the host's network.
export LODGE_NETWORK="${LODGE_NETWORK:-off}"
export LODGE_LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))"
export LODGE_BASE_URL="http://$LODGE_LISTEN"
"$lodge" serve >"$work/serve.log" 2>&1 &
daemon=$!
cleanup() {
    "$lodge" rm -f bench >/dev/null 2>&1 || true
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do "$lodge" ps >/dev/null 2>&1 && break; sleep 0.1; done
token=$("$lodge" token)
api() { curl -sf -o /dev/null -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@"; }
now() { date +%s%N; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

"$lodge" volume create --size 2 bdata >/dev/null
"$lodge" volume create --size 1 bhot >/dev/null
"$lodge" run -d --name bench --cpus 1 --memory 512MB --overlay-size 2GB -v bdata:/vol \
    --rootfs "$LODGE_SYSTEM_DIR/rootfs-busybox" sh -c 'while :; do sleep 3600; done' >/dev/null
"$lodge" exec --wait-for-agent 120 bench true

# io PATH: "write_MBps read_MBps" of 256 MiB at PATH in the guest, timed
# in the guest (/proc/uptime: this busybox's dd and date print no times).
io() {
    # shellcheck disable=SC2016
    "$lodge" exec --timeout 300 bench sh -c '
        t() { cut -d" " -f1 /proc/uptime; }
        sync; echo 3 > /proc/sys/vm/drop_caches
        a=$(t); dd if=/dev/zero of="$1" bs=1M count=256 conv=fsync 2>/dev/null; b=$(t)
        sync; echo 3 > /proc/sys/vm/drop_caches
        c=$(t); dd if="$1" of=/dev/null bs=1M 2>/dev/null; e=$(t)
        rm -f "$1"
        awk -v a="$a" -v b="$b" -v c="$c" -v e="$e" "BEGIN {printf \"%.1f %.1f\n\", 256 / (b - a), 256 / (e - c)}"' \
        sh "$1"
}
rounds="${ROUNDS:-3}"
vw=(); vr=(); rw=(); rr=()
for _ in $(seq "$rounds"); do
    read -r w r <<<"$(io /vol/bench.dat)"; vw+=("$w"); vr+=("$r")
    read -r w r <<<"$(io /bench.dat)"; rw+=("$w"); rr+=("$r")
done

hot=(); cold=()
[ -n "${IO_ONLY:-}" ] && { echo "volume w ${vw[*]} r ${vr[*]} / root w ${rw[*]} r ${rr[*]}"; exit 0; }
for _ in $(seq "$rounds"); do
    t0=$(now)
    api -X POST -d '{"mount_path":"/hot"}' "$LODGE_BASE_URL/instances/bench/volumes/bhot"
    hot+=($(( ($(now) - t0) / 1000000 )))
    "$lodge" exec bench sh -c 'grep -q " /hot " /proc/mounts'
    api -X DELETE "$LODGE_BASE_URL/instances/bench/volumes/bhot"
done
for _ in $(seq "$rounds"); do
    "$lodge" stop bench >/dev/null
    t0=$(now)
    "$lodge" start bench >/dev/null
    "$lodge" exec --wait-for-agent 120 bench true
    cold+=($(( ($(now) - t0) / 1000000 )))
done

echo "guest sequential I/O, 256 MiB (MB/s; median of $rounds, alternating):"
printf '  write: volume %s  root %s  ratio %s   (rounds: volume %s / root %s)\n' \
    "$(median "${vw[@]}")" "$(median "${rw[@]}")" "$(ratio "$(median "${vw[@]}")" "$(median "${rw[@]}")")" \
    "${vw[*]}" "${rw[*]}"
printf '  read:  volume %s  root %s  ratio %s   (rounds: volume %s / root %s)\n' \
    "$(median "${vr[@]}")" "$(median "${rr[@]}")" "$(ratio "$(median "${vr[@]}")" "$(median "${rr[@]}")")" \
    "${vr[*]}" "${rr[*]}"
echo "hot attach -> mounted vs cold boot -> agent answering (ms; median of $rounds):"
printf '  hot attach %s  cold boot %s  ratio %s   (rounds: %s / %s)\n' \
    "$(median "${hot[@]}")" "$(median "${cold[@]}")" "$(ratio "$(median "${hot[@]}")" "$(median "${cold[@]}")")" \
    "${hot[*]}" "${cold[*]}"
