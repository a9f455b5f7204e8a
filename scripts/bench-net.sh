#!/usr/bin/env bash
# Benchmark (not a test) of lodge's networking, side by side in one run, in
# network namespaces of its own (never the host's network):
#
#  1. TCP throughput host→guest and guest→host against one guest under
#     lodge, then against the very same guest (the same QEMU argv, disks and
#     config disk) under a bare qemu-system-x86_64 started by this script on
#     a TAP it set up by hand exactly as lodge does (bridge port isolated,
#     learning and flooding off, static FDB entry): the ratio lodge/bare;
#  2. create→program start (the instance reports Running) without a network
#     and with one, and create→guest reachable (first TCP connect to a
#     server the program starts): what the network adds;
#  3. daemon start (spawn → /health answers) with 20 instances on the
#     network to adopt, networking on vs off: the added start time.
#
# How: the script builds a host namespace (uplink veth to an "outside"
# namespace, default route) and re-runs itself inside it; every process it
# started dies with `ip netns pids` at the end and both namespaces are
# deleted, whatever happened.
#
# usage: scripts/bench-net.sh [RUNS]   (root; the guest from scripts/build-guest.sh;
#        LODGE_BIN=path/to/lodge skips the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"

if [ -z "${BENCH_NET_INNER:-}" ]; then
    [ "$(id -u)" = 0 ] || { echo "bench-net: needs root (network namespaces)" >&2; exit 1; }
    lodge="${LODGE_BIN:-$(./scripts/build-release.sh)}"
    h="lodge-bench-$$-h" o="lodge-bench-$$-o"
    cleanup() {
        set +e
        for ns in "$h" "$o"; do
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
            ip netns del "$ns" 2>/dev/null
        done
    }
    trap cleanup EXIT
    ip netns add "$h"
    ip netns add "$o"
    ip link add up0 netns "$h" type veth peer name wan0 netns "$o"
    ip -n "$h" link set lo up; ip -n "$o" link set lo up
    ip -n "$h" addr add 198.51.100.2/24 dev up0; ip -n "$h" link set up0 up
    ip -n "$o" addr add 198.51.100.1/24 dev wan0; ip -n "$o" link set wan0 up
    ip -n "$h" route add default via 198.51.100.1
    BENCH_NET_INNER=1 LODGE_BIN="$lodge" ip netns exec "$h" "$0" "$runs"
    exit
fi

# --- inside the host namespace -------------------------------------------
lodge="$LODGE_BIN"
work="$(mktemp -d /tmp/lodge-bench-net.XXXXXX)"
trap 'rm -rf "$work"' EXIT
export LODGE_DATA_DIR="$work/data" LODGE_NETWORK=on LODGE_DNS=198.51.100.1
# 20 one-vCPU instances run at once below: more than admission's default
# (4 vCPUs per host CPU) allows on a 2-core machine.
export LODGE_OVERSUB_CPU="${LODGE_OVERSUB_CPU:-16}"
export LODGE_LISTEN="127.0.0.1:8080" LODGE_BASE_URL="http://127.0.0.1:8080"
rootfs="$LODGE_SYSTEM_DIR/rootfs-busybox"

start_daemon() {
    "$lodge" serve >>"$work/serve.log" 2>&1 &
    daemon=$!
    for _ in $(seq 600); do
        curl -sf "$LODGE_BASE_URL/health" >/dev/null 2>&1 && return 0
        sleep 0.01
    done
    echo "bench-net: the daemon did not start:" >&2; tail -5 "$work/serve.log" >&2; exit 1
}
stop_daemon() { kill "$daemon"; wait "$daemon" 2>/dev/null || true; }
start_daemon
export LODGE_API_KEY="$("$lodge" token)"

python3 - "$runs" "$rootfs" <<'EOF'
import json, os, socket, statistics, subprocess, sys, threading, time, urllib.request

runs, rootfs = int(sys.argv[1]), sys.argv[2]
base, token = os.environ["LODGE_BASE_URL"], os.environ["LODGE_API_KEY"]
BLOB = 32 << 20

def api(method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        text = r.read()
        return json.loads(text) if text else None

def wait(what, f, timeout=180, step=0.005):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = f()
        if v:
            return v
        time.sleep(step)
    raise SystemExit(f"timed out waiting for {what}")

def connects(ip, port):
    try:
        socket.create_connection((ip, port), timeout=0.5).close()
        return True
    except OSError:
        return False

def to_guest(ip):
    """host→guest: BLOB bytes into the guest's `nc -l` (which closes at EOF)."""
    s = socket.create_connection((ip, 5001), timeout=60)
    chunk, left, t0 = b"\0" * (1 << 20), BLOB, time.time()
    while left:
        s.sendall(chunk[:min(left, len(chunk))]); left -= min(left, len(chunk))
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    return BLOB * 8 / (time.time() - t0) / 1e6

def from_guest(ip):
    """guest→host: the guest's httpd sends a BLOB-byte file."""
    s = socket.create_connection((ip, 8080), timeout=60)
    t0, n = time.time(), 0
    s.sendall(b"GET /blob HTTP/1.0\r\n\r\n")
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        n += len(b)
    assert n > BLOB, n
    return BLOB * 8 / (time.time() - t0) / 1e6

def retried(f, ip):
    # The guest's `nc -l` is restarted by a loop after each connection.
    for _ in range(50):
        try:
            return f(ip)
        except (ConnectionRefusedError, ConnectionResetError):
            time.sleep(0.1)
    raise SystemExit("the guest's nc never answered")

def measure(ip):
    wait("the guest's server", lambda: connects(ip, 8080))
    up = [retried(to_guest, ip) for _ in range(runs)]
    down = [from_guest(ip) for _ in range(runs)]
    return statistics.median(up), statistics.median(down)

# 1. throughput, lodge then bare QEMU on the same guest
server = (f"mkdir -p /w && dd if=/dev/zero of=/w/blob bs=1M count={BLOB >> 20} 2>/dev/null"
          " && busybox httpd -p 8080 -h /w && while :; do busybox nc -l -p 5001 >/dev/null; done")
inst = api("POST", "/instances", {"name": "tp", "rootfs": rootfs, "vcpus": 1, "size": "512MB",
                                  "cmd": ["sh", "-c", server]})
ip, mac, iid = inst["network"]["ip"], inst["network"]["mac"], inst["id"]
guest_dir = os.path.join(os.environ["LODGE_DATA_DIR"], "guests", iid)
tap = "lt-" + iid[:10]

def under_lodge():
    r = measure(ip)
    mon = json.load(open(os.path.join(guest_dir, "logs", "monitor.json")))
    argv = open(f"/proc/{mon['child_pid']}/cmdline", "rb").read().split(b"\0")[:-1]
    api("POST", f"/instances/{iid}/stop")
    return r, argv

def bare(argv):
    for cmd in (f"ip tuntap add dev {tap} mode tap", f"ip link set {tap} master lodge0 mtu 1500",
                f"bridge link set dev {tap} isolated on learning off flood off mcast_flood off",
                f"bridge fdb replace {mac} dev {tap} master static", f"ip link set {tap} up"):
        subprocess.run(cmd.split(), check=True)
    # The monitor hands QEMU the guest status channel as fd 3 (-add-fd fd=3).
    argv = [b"sh", b"-c", b'exec "$@" 3>>/dev/null', b"sh"] + argv
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=guest_dir)
    try:
        return measure(ip)
    finally:
        qemu.kill(); qemu.wait()
        subprocess.run(["ip", "link", "del", tap], check=True)

# Alternating, so neither side always runs on the warmer host: lodge, bare,
# bare, lodge (the same guest each time; lodge's stop removes its TAP).
l1, argv = under_lodge()
b1 = bare(argv)
b2 = bare(argv)
api("POST", f"/instances/{iid}/start")
l2, _ = under_lodge()
api("POST", f"/instances/{iid}/start")
l3, _ = under_lodge()
b3 = bare(argv)
api("DELETE", f"/instances/{iid}")
ls, bs = (l1, l2, l3), (b1, b2, b3)
# Best of three a side: one sample varies by ±25% under TCG.
lodge_up, lodge_down = max(x[0] for x in ls), max(x[1] for x in ls)
bare_up, bare_down = max(x[0] for x in bs), max(x[1] for x in bs)
print("throughput runs (Mbit/s up/down): lodge " + ", ".join(f"{x[0]:.0f}/{x[1]:.0f}" for x in ls)
      + "; bare " + ", ".join(f"{x[0]:.0f}/{x[1]:.0f}" for x in bs))
print(f"throughput host→guest: lodge {lodge_up:.0f} Mbit/s, bare qemu {bare_up:.0f} Mbit/s, ratio {lodge_up / bare_up:.3f}")
print(f"throughput guest→host: lodge {lodge_down:.0f} Mbit/s, bare qemu {bare_down:.0f} Mbit/s, ratio {lodge_down / bare_down:.3f}")

# 2. create → program start / reachable
def create_times(network):
    body = {"name": f"cr-{time.time_ns()}", "rootfs": rootfs, "vcpus": 1, "size": "256MB",
            "overlay_size": "64MB", "cmd": ["busybox", "httpd", "-f", "-p", "8080", "-h", "/"]}
    if not network:
        body["network"] = {"enabled": False}
    t0 = time.time()
    inst = api("POST", "/instances", body)
    created = time.time() - t0
    started = [None]
    def poll_state():
        wait("Running", lambda: api("GET", f"/instances/{inst['id']}")["state"] == "Running", step=0.002)
        started[0] = time.time() - t0
    th = threading.Thread(target=poll_state); th.start()
    reach = None
    if network:
        wait("reachable", lambda: connects(inst["network"]["ip"], 8080), step=0.002)
        reach = time.time() - t0
    th.join()
    api("DELETE", f"/instances/{inst['id']}")
    return created, started[0], reach

# Alternating off/on (and which goes first), at least 8 of each: one boot
# varies by ±10-20% under TCG, so separate blocks of a few runs measured
# the host's drift, not the network.
off, on = [], []
for r in range(max(runs, 8)):
    for net in ((False, True) if r % 2 == 0 else (True, False)):
        (on if net else off).append(create_times(net))
ms = lambda xs: " ".join(f"{x * 1000:.0f}" for x in xs)
print(f"create→program start runs (ms): no network {ms([s for _, s, _ in off])}; network {ms([s for _, s, _ in on])}")
med = lambda xs: statistics.median(xs) * 1000
print(f"create answered: no network {med([c for c, _, _ in off]):.0f} ms, network {med([c for c, _, _ in on]):.0f} ms")
print(f"create→program start: no network {med([s for _, s, _ in off]):.0f} ms, network {med([s for _, s, _ in on]):.0f} ms "
      f"(ratio {med([s for _, s, _ in on]) / med([s for _, s, _ in off]):.3f})")
print(f"create→guest reachable (network): {med([r for _, _, r in on]):.0f} ms "
      f"(vs program start with a network: ratio {med([r for _, _, r in on]) / med([s for _, s, _ in on]):.3f}; "
      f"without: {med([r for _, _, r in on]) / med([s for _, s, _ in off]):.3f})")

# 3. twenty instances on the network for the daemon-start measurement
for i in range(20):
    api("POST", "/instances", {"name": f"adopt-{i}", "rootfs": rootfs, "vcpus": 1, "size": "128MB",
                               "overlay_size": "32MB", "cmd": ["sh", "-c", "while :; do sleep 3600; done"]})
wait("20 instances running", lambda: sum(i["state"] == "Running" for i in api("GET", "/instances")) == 20, timeout=600, step=0.5)
EOF

# 3. daemon start, networking on vs off, the 20 instances running throughout
# Sets $ms to how long a daemon restart took until /health answered.
measure_start() {
    local t0 t1
    stop_daemon
    t0=$(date +%s%N)
    start_daemon
    t1=$(date +%s%N)
    ms=$(( (t1 - t0) / 1000000 ))
}
on=() off=()
for _ in $(seq "$runs"); do
    LODGE_NETWORK=on measure_start; on+=("$ms")
    LODGE_NETWORK=off measure_start; off+=("$ms")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
taps=$(ip -o link show | grep -c ' lt-' || true)
echo "daemon start with 20 instances to adopt ($taps TAPs): networking on $(median "${on[@]}") ms, off $(median "${off[@]}") ms (runs: on ${on[*]}; off ${off[*]})"
LODGE_NETWORK=on measure_start
for id in $("$lodge" ps -a -q); do "$lodge" rm -f "$id" >/dev/null; done
stop_daemon
echo "accel: $LODGE_ACCEL, $runs runs, lodge: $lodge"
