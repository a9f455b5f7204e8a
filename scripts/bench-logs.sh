#!/usr/bin/env bash
# Benchmarks of the console log pipeline (shared/DESIGN.md §4), each as a
# ratio against its baseline measured side by side in this one run:
#   1. capture throughput, 1 GiB with rotation every 1 MiB, vs `CMD | cat > file`
#      (target >= 0.90). Both sides write and keep the same bytes: lodge keeps
#      every segment (--max-files above the segment count), so neither side
#      gains from deleting data before it reaches the disk.
#   2. `lodge logs --dir D --tail 100` over 1 GiB in 100 segments vs GNU
#      `tail -n 100` on one 1 GiB file (target <= 1.0)
#   3. follow latency from write to follower output, p50/p99 (target p99 <= 5 ms),
#      and wake-ups of an idle follower and monitor (target 0)
#   4. monitor resident memory while streaming 1 GiB (target <= 4 MiB)
#
# Needs: hyperfine, python3, GNU coreutils. Uses the release binary (built if
# missing or stale). Scratch data (about 3 × BENCH_SIZE) goes under
# ${BENCH_TMP:-/tmp} and is removed on exit. RUNS sets hyperfine's run count
# (default 10); BENCH_SIZE the data size in bytes (default 1 GiB; a few MiB
# with RUNS=1 is a quick smoke test of the script, not a measurement).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LODGE="$("$ROOT/scripts/build-release.sh")"
RUNS=${RUNS:-10}
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/lodge-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

SIZE=${BENCH_SIZE:-$((1 << 30))}
MiB=$((1 << 20))
(( SIZE >= 2 * MiB )) || { echo "BENCH_SIZE must be at least 2 MiB" >&2; exit 2; }
SIZE_LABEL="$(python3 -c "import sys; s=int(sys.argv[1]); print(f'{s/2**30:g} GiB' if s >= 2**30 else f'{s/2**20:g} MiB')" "$SIZE")"
DATA="$WORK/data"
# Log-like lines of varying length, SIZE bytes exactly.
echo "generating $SIZE_LABEL of log lines..." >&2
{ seq -f 'kernel: [%12.0f] virtio_blk virtio1: [vda] 4194304 512-byte logical blocks' 1 20000000 || true; } \
    | head -c "$SIZE" > "$DATA"
# Bytes of captured output in a directory (the monitor's own small status
# files aside).
bytes_in() {
    find "$1" -type f \( -name 'app.log*' -o -name out \) -printf '%s\n' \
        | awk '{ n += $1 } END { print n + 0 }'
}

ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "$1" "$2"; }
mean() { python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results']; print(r[int(sys.argv[2])]['mean'])" "$1" "$2"; }

echo
# Every segment is kept, so lodge writes (and leaves on disk) exactly the
# bytes the reference does.
keep=$((SIZE / MiB + 2))
echo "== 1. capture throughput: $SIZE_LABEL, rotation every 1 MiB, all $keep segments kept"
CAP="$WORK/cap"
capture="$LODGE supervise --log-dir $CAP --max-size 1MiB --max-files $keep -- cat $DATA"
reference="cat $DATA | cat > $CAP/out"
# Check once, outside the timing, that both sides end with the same bytes.
for side in "$capture" "$reference"; do
    rm -rf "$CAP"; mkdir -p "$CAP"
    bash -c "$side"
    kept=$(bytes_in "$CAP")
    (( kept == SIZE )) || { echo "'$side' kept $kept bytes, not $SIZE" >&2; exit 1; }
done
hyperfine --runs "$RUNS" --warmup 1 --export-json "$WORK/capture.json" \
    --prepare "rm -rf $CAP; mkdir -p $CAP; sync" \
    -n "lodge supervise" "$capture" \
    -n "cat | cat > file" "$reference" >&2
t_lodge=$(mean "$WORK/capture.json" 0)
t_cat=$(mean "$WORK/capture.json" 1)
cap_ratio=$(ratio "$t_cat" "$t_lodge")
echo "lodge: $(python3 -c "print(f'{$SIZE / $t_lodge / 2**20:.0f}')") MiB/s, cat: $(python3 -c "print(f'{$SIZE / $t_cat / 2**20:.0f}')") MiB/s, ratio $cap_ratio (target >= 0.90)"

echo
echo "== 2. tail -n 100: $SIZE_LABEL in 100 segments vs one $SIZE_LABEL file"
SEG="$WORK/segments"
mkdir -p "$SEG"
seg_size=$((SIZE / 100 + 1))
"$LODGE" supervise --log-dir "$SEG" --max-size "$seg_size" --max-files 100 -- cat "$DATA"
echo "segments: $(find "$SEG" -maxdepth 1 -name 'app.log.*' | wc -l) rotated + live, $(du -sh "$SEG" | cut -f1)" >&2
hyperfine -N --runs $((RUNS * 200)) --warmup 50 --export-json "$WORK/tail.json" \
    -n "lodge logs --tail 100" "$LODGE logs --dir $SEG --tail 100" \
    -n "tail -n 100" "tail -n 100 $DATA" >&2
t_lodge=$(mean "$WORK/tail.json" 0)
t_tail=$(mean "$WORK/tail.json" 1)
tail_ratio=$(ratio "$t_lodge" "$t_tail")
cmp <("$LODGE" logs --dir "$SEG" --tail 100) <(tail -n 100 "$DATA") >/dev/null \
    || { echo "lodge logs and tail disagree" >&2; exit 1; }
echo "lodge: $(python3 -c "print(f'{$t_lodge*1e3:.2f}')") ms, tail: $(python3 -c "print(f'{$t_tail*1e3:.2f}')") ms, ratio $tail_ratio (target <= 1.0)"
rm -rf "$SEG" "$CAP"

echo
echo "== 3. follow latency and idle wake-ups; 4. monitor memory"
python3 - "$LODGE" "$WORK" "$DATA" "$SIZE_LABEL" <<'EOF'
import os, select, subprocess, sys, time

lodge, work, data, size_label = sys.argv[1:5]

def thread_switches(pid):
    """Context switches summed over all threads of pid."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total

def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0

# 3. A monitor whose child copies a FIFO to stdout; a follower on its log.
d = os.path.join(work, "follow")
os.mkdir(d)
fifo = os.path.join(work, "fifo")
os.mkfifo(fifo)
monitor = subprocess.Popen([lodge, "supervise", "--log-dir", d, "--max-size", "64KiB", "--max-files", "2", "--", "cat", fifo])
w = open(fifo, "wb", buffering=0)
follower = subprocess.Popen([lodge, "logs", "--dir", d, "-f", "--tail", "0"], stdout=subprocess.PIPE, bufsize=0)
out = follower.stdout

def read_line():
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(out.fileno(), 4096)
        if not chunk:
            raise SystemExit("follower ended early")
        line += chunk
    return line

# Wait until the follower is attached.
while True:
    w.write(b"ready\n")
    r, _, _ = select.select([out], [], [], 0.2)
    if r:
        read_line()
        break
time.sleep(0.2)
while select.select([out], [], [], 0.1)[0]:
    os.read(out.fileno(), 65536)

samples = []
pad = b"x" * 100
for i in range(2000):
    t0 = time.perf_counter_ns()
    w.write(b"%d %s\n" % (i, pad))
    line = read_line()
    samples.append(time.perf_counter_ns() - t0)
    assert line.startswith(b"%d " % i), line
    time.sleep(0.001)
samples.sort()
p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] / 1e6
print(f"follow latency over {len(samples)} lines (64 KiB rotation, ~30 rotations): "
      f"p50 {p(0.50):.3f} ms, p99 {p(0.99):.3f} ms, max {samples[-1]/1e6:.3f} ms (target p99 <= 5 ms)")

time.sleep(0.5)
f0, m0 = thread_switches(follower.pid), thread_switches(monitor.pid)
time.sleep(5)
f1, m1 = thread_switches(follower.pid), thread_switches(monitor.pid)
print(f"idle wake-ups over 5 s: follower {f1 - f0}, monitor {m1 - m0} (target 0)")
w.close()
monitor.wait()
follower.wait()

# 4. Monitor resident memory while streaming the data with rotation every 1 MiB.
d = os.path.join(work, "rss")
os.mkdir(d)
monitor = subprocess.Popen([lodge, "supervise", "--log-dir", d, "--max-size", "1MiB", "--max-files", "5", "--", "cat", data])
peak_anon = hwm = 0
while monitor.poll() is None:
    try:
        hwm = max(hwm, status_kib(monitor.pid, "VmHWM"))
        peak_anon = max(peak_anon, status_kib(monitor.pid, "RssAnon"))
    except (FileNotFoundError, ProcessLookupError):
        break
    time.sleep(0.01)
print(f"monitor memory while streaming {size_label}: VmHWM {hwm / 1024:.2f} MiB (target <= 4 MiB), "
      f"of which private (peak RssAnon) {peak_anon / 1024:.2f} MiB; the rest is mapped code of lodge and libc")

# The same with rotated segments compressed (LODGE_LOG_COMPRESS=zstd): the
# zstd child processes are not the monitor's memory.
d = os.path.join(work, "rss-zstd")
os.mkdir(d)
monitor = subprocess.Popen([lodge, "supervise", "--log-dir", d, "--max-size", "1MiB", "--max-files", "5", "--", "cat", data],
                           env=dict(os.environ, LODGE_LOG_COMPRESS="zstd"))
peak_anon = hwm = 0
while monitor.poll() is None:
    try:
        hwm = max(hwm, status_kib(monitor.pid, "VmHWM"))
        peak_anon = max(peak_anon, status_kib(monitor.pid, "RssAnon"))
    except (FileNotFoundError, ProcessLookupError):
        break
    time.sleep(0.01)
zst = len([n for n in os.listdir(d) if n.endswith(".zst")])
print(f"monitor memory with LODGE_LOG_COMPRESS=zstd: VmHWM {hwm / 1024:.2f} MiB (target <= 4 MiB), "
      f"peak RssAnon {peak_anon / 1024:.2f} MiB; {zst} compressed segments kept")
EOF
