#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this): installs what the
# tests need, builds the guest kernel/initrd once, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$PWD/.lodge-cache/system}"
./scripts/build-guest.sh "$LODGE_SYSTEM_DIR"

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
cargo test --workspace -- --test-threads="${LODGE_TEST_THREADS:-2}"
