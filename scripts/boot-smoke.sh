#!/usr/bin/env bash
# boot-smoke.sh [OUTDIR] — boot the guest built by build-guest.sh by hand,
# with plain qemu-system-x86_64 and no lodge daemon, and check what comes out.
#
# Cases:
#   1. lodge.selftest: the console shows exactly "lodge-selftest: ok" and QEMU exits
#   2. sh -c 'echo hello; echo $FOO; pwd; exit 3' with FOO=bar, workdir /tmp:
#      console "hello", "bar", "/tmp"; status "started pid=N", "exited code=3"
#   3. a program that does not exist: docker's message on the console,
#      status "exited code=127"
#   4. user and environment: uid/gid 65534, HOME from the image's /etc/passwd
#   5. 30000 lines of output arrive byte for byte (no \r, nothing lost at exit)
#   6. a workload killed by a signal: status "exited signal=9"
#   7. graceful stop: QMP system_powerdown presses the ACPI power button, the
#      init sends SIGTERM, the workload's trap runs, status "exited code=42"
# and prints boot timings (to the "started" status line, and to QEMU's exit),
# for OUTDIR/vmlinux (PVH boot, used for the cases when present) and for
# OUTDIR/vmlinuz (the compressed bzImage) side by side.
#
# OUTDIR defaults to $LODGE_SYSTEM_DIR or ./.lodge-cache/system. Software
# emulation (TCG) unless LODGE_ACCEL=kvm. LODGE_SMOKE_KEEP=1 keeps the
# scratch directory with the disks and logs.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${LODGE_SYSTEM_DIR:-$repo/.lodge-cache/system}}
accel=${LODGE_ACCEL:-tcg}
init_bin=${LODGE_INIT:-${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu/release/lodge-init}
for f in "$out/vmlinuz" "$out/initrd.img" "$out/rootfs-busybox/bin/busybox" "$init_bin"; do
    [ -e "$f" ] || { echo "boot-smoke: missing $f (run scripts/build-guest.sh $out)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/lodge-smoke.XXXXXX)
if [ -z "${LODGE_SMOKE_KEEP:-}" ]; then
    trap 'rm -rf "$work"' EXIT
else
    echo "boot-smoke: keeping $work"
fi
failures=0
fail() { echo "boot-smoke: FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "boot-smoke: ok: $*"; }
now_ms() { date +%s%3N; }

# The image disk: the busybox tree as ext4 without a journal, sized to fit.
kib=$(du -sk "$out/rootfs-busybox" | cut -f1)
size_mib=$(( (kib * 3 / 2) / 1024 + 16 ))
truncate -s "${size_mib}M" "$work/rootfs.ext4"
mkfs.ext4 -q -F -d "$out/rootfs-busybox" -O ^has_journal "$work/rootfs.ext4"

kernel="$out/vmlinuz"
[ -e "$out/vmlinux" ] && kernel="$out/vmlinux"

# boot NAME CMDLINE_EXTRA CONFIG_JSON [KERNEL]: boot once, leaving
# NAME.console, NAME.status and NAME.times ("started_ms total_ms") in $work.
boot() {
    local name=$1 extra=$2 json=$3 kernel=${4:-$kernel}
    local console="$work/$name.console" status="$work/$name.status"
    rm -f "$work/overlay.ext4"
    truncate -s 256M "$work/overlay.ext4"
    mkfs.ext4 -q -F "$work/overlay.ext4"
    "$init_bin" --print-config-image "$json" > "$work/config.img"
    : > "$status"
    local start started=-1 qemu_pid ready_done=
    rm -f "$work/qmp.sock"
    start=$(now_ms)
    timeout 300 qemu-system-x86_64 \
        -nodefaults -no-user-config -display none -no-reboot \
        -machine q35 -accel "$accel" -m 256 -smp 1 \
        -kernel "$kernel" -initrd "$out/initrd.img" \
        -append "console=ttyS0 quiet panic=-1 $extra" \
        -chardev stdio,id=con -serial chardev:con \
        -chardev "file,id=st,path=$status,append=on" -serial chardev:st \
        -drive "file=$work/rootfs.ext4,if=none,id=root,format=raw,readonly=on" \
        -device virtio-blk-pci,drive=root,serial=lodge-root \
        -drive "file=$work/overlay.ext4,if=none,id=overlay,format=raw" \
        -device virtio-blk-pci,drive=overlay,serial=lodge-overlay \
        -drive "file=$work/config.img,if=none,id=config,format=raw,readonly=on" \
        -device virtio-blk-pci,drive=config,serial=lodge-config \
        -qmp "unix:$work/qmp.sock,server=on,wait=off" \
        < /dev/null > "$console" 2> "$work/$name.qemu-stderr" &
    qemu_pid=$!
    while kill -0 "$qemu_pid" 2>/dev/null; do
        if [ "$started" -lt 0 ] && grep -q '^lodge-init: started' "$status"; then
            started=$(( $(now_ms) - start ))
        fi
        # A boot with an on_ready hook runs it once "ready" is on the console.
        if [ -n "${on_ready:-}" ] && [ -z "$ready_done" ] && grep -q '^ready$' "$console"; then
            ready_done=1
            "$on_ready"
        fi
        sleep 0.01
    done
    local rc=0
    wait "$qemu_pid" || rc=$?
    echo "$started $(( $(now_ms) - start ))" > "$work/$name.times"
    if [ "$rc" -ne 0 ]; then
        fail "$name: qemu exited with $rc: $(cat "$work/$name.qemu-stderr")"
    fi
}

show() {
    echo "----- $1 console -----"
    cat -A "$work/$1.console" | sed 's/^/  /'
    echo "----- $1 status -----"
    sed 's/^/  /' "$work/$1.status"
}

# 1. self-test
boot selftest lodge.selftest '{"argv":["true"]}'
if [ "$(cat "$work/selftest.console")" = "lodge-selftest: ok" ]; then
    pass "selftest printed exactly 'lodge-selftest: ok' ($(cut -d' ' -f2 "$work/selftest.times") ms to exit)"
else
    fail "selftest console"; show selftest
fi

# 2. the workload, its environment, working directory and exit code
boot run "" '{"argv":["sh","-c","echo hello; echo $FOO; pwd; exit 3"],"env":["FOO=bar"],"workdir":"/tmp","hostname":"smoke"}'
if [ "$(cat "$work/run.console")" = $'hello\nbar\n/tmp' ]; then
    pass "console is exactly hello/bar//tmp"
else
    fail "run console"; show run
fi
if grep -qx 'lodge-init: started pid=[0-9]*' "$work/run.status" &&
    grep -qx 'lodge-init: exited code=3' "$work/run.status" &&
    [ "$(wc -l < "$work/run.status")" -eq 2 ]; then
    pass "status: $(tr '\n' ';' < "$work/run.status")"
else
    fail "run status"; show run
fi
read -r run_started run_total < "$work/run.times"

# 3. a program that does not exist
boot missing "" '{"argv":["nosuchprog","x"]}'
if [ "$(cat "$work/missing.console")" = 'exec: "nosuchprog": executable file not found in $PATH' ] &&
    [ "$(cat "$work/missing.status")" = "lodge-init: exited code=127" ]; then
    pass "missing program: docker's message, exit code 127"
else
    fail "missing program"; show missing
fi

# 4. user and environment
boot user "" '{"argv":["sh","-c","id -u; id -g; echo $HOME $HOSTNAME $FOO"],"env":["FOO=x"],"user":"65534","hostname":"smoke"}'
if [ "$(cat "$work/user.console")" = $'65534\n65534\n/nonexistent smoke x' ]; then
    pass "user 65534 with HOME from /etc/passwd and HOSTNAME"
else
    fail "user"; show user
fi

# 5. bulk output, byte for byte
boot bulk "" '{"argv":["seq","1","30000"]}'
if seq 1 30000 | cmp -s - "$work/bulk.console"; then
    pass "30000 lines byte-exact ($(wc -c < "$work/bulk.console") bytes)"
else
    fail "bulk output differs"; tail -c 300 "$work/bulk.console" | cat -A
fi

# 6. killed by a signal
boot signal "" '{"argv":["sh","-c","kill -9 $$"]}'
if grep -qx 'lodge-init: exited signal=9' "$work/signal.status"; then
    pass "signal: $(tail -n 1 "$work/signal.status")"
else
    fail "signal"; show signal
fi

# 7. graceful stop through the power button
powerdown() {
    python3 - "$work/qmp.sock" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", "system_powerdown"):
    f.write(json.dumps({"execute": cmd}) + "\n")
    f.flush()
    f.readline()
PY
}
on_ready=powerdown boot stop "" '{"argv":["sh","-c","trap \"echo got TERM; exit 42\" TERM; echo ready; while true; do sleep 1; done"]}'
if [ "$(cat "$work/stop.console")" = $'ready\ngot TERM' ] &&
    grep -qx 'lodge-init: exited code=42' "$work/stop.status"; then
    pass "power button: SIGTERM delivered, trap ran, exit code 42"
else
    fail "graceful stop"; show stop
fi

echo "boot-smoke: timings ($accel, $(basename "$kernel")): selftest $(cut -d' ' -f2 "$work/selftest.times") ms;" \
    "run: started after $run_started ms, QEMU exited after $run_total ms"
if [ "$kernel" != "$out/vmlinuz" ]; then
    boot bzimage "" '{"argv":["sh","-c","echo hello; echo $FOO; pwd; exit 3"],"env":["FOO=bar"],"workdir":"/tmp"}' "$out/vmlinuz"
    grep -qx 'lodge-init: exited code=3' "$work/bzimage.status" || { fail "vmlinuz boot"; show bzimage; }
    read -r bz_started bz_total < "$work/bzimage.times"
    echo "boot-smoke: timings ($accel, vmlinuz): run: started after $bz_started ms, QEMU exited after $bz_total ms"
fi
if [ "$failures" -ne 0 ]; then
    echo "boot-smoke: $failures failure(s)"
    exit 1
fi
echo "boot-smoke: all passed"
