#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this): installs what the
# tests need, builds the guest kernel/initrd once, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
# The suite runs on the lodge kernel (built from Debian's kernel source and
# cached outside the clone); Debian's prebuilt kernel, the fallback, gets a
# smoke test of its own below, before the suite.
./scripts/build-guest.sh --kernel lodge "$LODGE_SYSTEM_DIR"
if [ "$(cat "$LODGE_SYSTEM_DIR/kernel-flavor")" != lodge ]; then
    echo "test.sh: the lodge kernel was not built (see build-guest's warning)" >&2
    exit 1
fi
debian_system="${LODGE_DEBIAN_SYSTEM_DIR:-$PWD/.lodge-cache/system-debian}"
./scripts/build-guest.sh --kernel debian "$debian_system"
./scripts/boot-smoke.sh "$debian_system"

# hypeman's official Python client, for the API compatibility test, and
# schemathesis, for the API fuzz test (tests/api_fuzz.rs).
venv="$PWD/.lodge-cache/venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import hypeman, schemathesis' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'hypeman==0.28.0' 'schemathesis==4.32.5'
fi
export LODGE_COMPAT_PYTHON="$venv/bin/python"

# Software emulation unless told otherwise: this machine's KVM is unusable
# (the accel probe itself is covered by its own test).
export LODGE_ACCEL="${LODGE_ACCEL:-tcg}"

# Here every VM test must run: a missing guest or client is a failure, not
# the skip a plain `cargo test` on a machine without a guest gets.
export LODGE_REQUIRE_GUEST=1

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
python3 scripts/check-import-cycles.py crates
# Tests never change the host's own network: every link, address and
# firewall table they make lives in namespaces they create. Checked here by
# comparing the root namespace's links and nftables tables before and after.
host_net() {
    ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
    if command -v nft >/dev/null; then nft list tables 2>/dev/null | sort; fi
}
# Loading the ifb module (upload limits) would add ifb0/ifb1 to the root
# namespace; with numifbs=0 it adds none (no effect if already loaded).
modprobe ifb numifbs=0 2>/dev/null || true
before=$(host_net)
# A hang fails the run instead of eating CI's 90 minutes (each CLI call a
# test makes has its own limit too: tests/common/mod.rs `output_within`).
timeout --kill-after=30 "${LODGE_TEST_TIMEOUT:-3600}" \
    cargo test --workspace -- --test-threads="${LODGE_TEST_THREADS:-2}"
after=$(host_net)
if [ "$before" != "$after" ]; then
    echo "test.sh: the tests changed the host's network:" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    exit 1
fi
