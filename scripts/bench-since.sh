#!/usr/bin/env bash
# `--since` over a big log costs about what `--tail 100` does (issue 17,
# item 3; target <= 2x): 1 GiB in 100 segments is written, then, after a
# pause, 100 more lines; `lodge logs --dir D --since T` with T inside the
# pause (the last "minute") is timed against `lodge logs --dir D --tail 100`,
# side by side in one run. Both print the same 100 lines.
#
#   scripts/bench-since.sh                 # BENCH_SIZE=1 GiB, RUNS=20
#   LODGE=target/debug/lodge BENCH_SIZE=$((64 << 20)) scripts/bench-since.sh
set -euo pipefail
cd "$(dirname "$0")/.."
lodge="${LODGE:-$(./scripts/build-release.sh)}"
SIZE=${BENCH_SIZE:-$((1 << 30))}
RUNS=${RUNS:-20}
work="$(mktemp -d "${BENCH_TMP:-/tmp}/lodge-bench-since.XXXXXX")"
trap 'rm -rf "$work"' EXIT
seg=$((SIZE / 100))
{ seq -f 'kernel: [%12.0f] virtio_blk virtio1: [vda] 4194304 512-byte logical blocks' 1 20000000 || true; } \
    | head -c "$((SIZE - 1))" > "$work/data"
echo >> "$work/data"  # ends with a whole line: the late lines start their own
mkdir "$work/logs"
"$lodge" supervise --log-dir "$work/logs" --max-size "$seg" --max-files 101 -- \
    sh -c "cat $work/data; sleep 2; seq -f 'late %g' 1 100" &
monitor=$!
total() { find "$work/logs" -name "app.log*" -printf "%s\n" 2>/dev/null | awk '{ n += $1 } END { print n + 0 }'; }
until [ "$(total)" -ge "$SIZE" ]; do sleep 0.05; done
sleep 0.5
mark=$(python3 -c 'import datetime; print(datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))')
wait "$monitor"
rm "$work/data"
since_out=$("$lodge" logs --dir "$work/logs" --since "$mark" --tail all)
tail_out=$("$lodge" logs --dir "$work/logs" --tail 100)
[ "$since_out" = "$tail_out" ] || { echo "--since ($(echo "$since_out" | wc -l) lines) and --tail 100 differ" >&2; echo "$since_out" | head -3 >&2; exit 1; }
time_runs() {
    python3 - "$RUNS" "$@" <<'EOF'
import subprocess, sys, time
runs, cmd = int(sys.argv[1]), sys.argv[2:]
best = []
for _ in range(runs):
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    best.append(time.perf_counter() - t)
best.sort()
print(best[len(best) // 2])
EOF
}
s=$(time_runs "$lodge" logs --dir "$work/logs" --since "$mark" --tail all)
t=$(time_runs "$lodge" logs --dir "$work/logs" --tail 100)
echo "log: $SIZE bytes in $(ls "$work/logs" | grep -c '^app.log') files"
python3 -c "print(f'--since (last 100 lines): {$s*1000:.2f} ms; --tail 100: {$t*1000:.2f} ms; ratio {$s/$t:.2f} (target <= 2)')"
