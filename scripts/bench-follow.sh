#!/usr/bin/env bash
# CPU of following a busy console (issue 17, item 2): `lodge logs --dir D -f`
# against GNU `tail -f` on the same stream, side by side in one run
# (target: lodge <= 1.0x tail).
#
# The stream is what a chatty guest gives the monitor: SIZE_MB of 80-byte
# lines, one write() per line, paced (see PACE), through `lodge supervise` (which coalesces
# small appends for up to 1 ms). Both followers attach before the first
# byte; each one's user+system CPU time is read from /proc when the stream
# has ended and it printed every byte.
#
#   scripts/bench-follow.sh               # SIZE_MB=20
#   LODGE=target/debug/lodge scripts/bench-follow.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-20}
# A pause of about 1 ms after every PACE lines: a console trickling output
# (about 2 MB/s), not one burst the monitor can take in a few reads.
PACE=${PACE:-32}
lodge="${LODGE:-$(./scripts/build-release.sh)}"
work="$(mktemp -d "${BENCH_TMP:-/tmp}/lodge-bench-follow.XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
dir="$work/logs"
mkdir -p "$dir"
bytes=$((SIZE_MB * 1024 * 1024 / 80 * 80))
# The writer waits for a go file so the followers attach first.
writer="import os, sys, time
while not os.path.exists('$work/go'): time.sleep(0.01)
line = b'x' * 79 + b'\n'
for i in range($bytes // 80):
    os.write(1, line)
    if i % $PACE == 0: time.sleep(0.001)"
"$lodge" supervise --log-dir "$dir" --max-size 1GiB --max-files 2 -- python3 -c "$writer" &
pids+=($!); monitor=$!
until [ -e "$dir/monitor.json" ]; do sleep 0.01; done
TIMEFORMAT='%U %S'
# lodge's follower ends by itself with the monitor: bash's `time` counts it.
{ time "$lodge" logs --dir "$dir" --tail 0 -f > "$work/lodge.out"; } 2> "$work/lodge.time" &
pids+=($!); lodge_job=$!
tail -n 0 -f "$dir/app.log" > "$work/tail.out" &
pids+=($!); tail_pid=$!
sleep 0.5
start=$(date +%s.%N)
touch "$work/go"
wait "$monitor"
end=$(date +%s.%N)
wait "$lodge_job"
# tail -f never ends by itself: its CPU is read once it printed everything.
until [ "$(stat -c %s "$work/tail.out")" -ge "$bytes" ]; do sleep 0.05; done
tail_cpu=$(awk '{ print ($14 + $15) / '"$(getconf CLK_TCK)"' }' "/proc/$tail_pid/stat")
kill "$tail_pid"
lodge_cpu=$(awk '{ print $1 + $2 }' "$work/lodge.time")
for out in lodge.out tail.out; do
    got=$(stat -c %s "$work/$out")
    [ "$got" -eq "$bytes" ] || { echo "$out: $got bytes, not $bytes" >&2; exit 1; }
done
echo "stream: $SIZE_MB MiB in $(python3 -c "print(f'{$end - $start:.2f}')") s, $((bytes / 80)) writes"
echo "lodge logs -f CPU: $lodge_cpu s; tail -f CPU: $tail_cpu s"
python3 -c "print(f'ratio lodge/tail: {$lodge_cpu / max($tail_cpu, 0.01):.2f} (target <= 1.0)')"
