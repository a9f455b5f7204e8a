#!/usr/bin/env bash
# Builds the release `lodge` binary and prints its path.
#
# Static and not position-independent: the per-VM monitor is this binary, and
# a PIE linked against the shared libc pays ~24k startup relocations and the
# shared libraries' pages, which alone put a monitor over its 4 MiB memory
# budget and make `logs --tail` start slower than GNU tail. `--target` keeps
# these flags off build scripts and proc macros; a target dir of its own keeps
# them from invalidating other builds.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/target/static"
RUSTFLAGS="-C relocation-model=static -C target-feature=+crt-static" \
    cargo build --quiet --release -p lodge --target x86_64-unknown-linux-gnu --target-dir "$dir" >&2
echo "$dir/x86_64-unknown-linux-gnu/release/lodge"
