#!/usr/bin/env bash
# Quick start, step 1: install everything lodge needs, build it, build the
# guest kernel + initrd + demo root file system, start the daemon, and boot a
# real VM (offline). Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (it installs packages and keeps state in /var/lib/lodge)" >&2
    exit 1
fi

./scripts/install-deps.sh
install -m 0755 "$(./scripts/build-release.sh)" /usr/local/bin/lodge

export LODGE_DATA_DIR="${LODGE_DATA_DIR:-/var/lib/lodge}"
export LODGE_SYSTEM_DIR="${LODGE_SYSTEM_DIR:-$LODGE_DATA_DIR/system}"
./scripts/build-guest.sh "$LODGE_SYSTEM_DIR"

# Networking (a bridge, NAT out of the default-route interface) is on by
# default for a root daemon. Offline, with no default route and no
# LODGE_UPLINK, there is nothing to NAT to: run the demo without a network
# rather than fail (say LODGE_NETWORK=on to insist, LODGE_UPLINK=IF to pick
# the uplink yourself).
if [ -z "${LODGE_NETWORK:-}" ] && [ -z "${LODGE_UPLINK:-}" ] \
    && [ -z "$(ip -4 route show default 2>/dev/null)" ]; then
    echo "setup: no default route, so the daemon runs without a network (LODGE_NETWORK=off)"
    export LODGE_NETWORK=off
fi

# Start the daemon unless one already answers.
if ! lodge ps >/dev/null 2>&1; then
    echo "setup: starting lodge serve (log: $LODGE_DATA_DIR/serve.log)"
    mkdir -p "$LODGE_DATA_DIR"
    setsid nohup lodge serve >>"$LODGE_DATA_DIR/serve.log" 2>&1 < /dev/null &
    for _ in $(seq 1 300); do
        lodge ps >/dev/null 2>&1 && break
        sleep 0.1
    done
    if ! lodge ps >/dev/null 2>&1; then
        echo "setup: lodge serve did not start; the end of its log:" >&2
        tail -n 5 "$LODGE_DATA_DIR/serve.log" >&2
        exit 1
    fi
fi

# The demo image: the busybox tree as a one-layer OCI archive, built here
# (no network), imported like any image and booted from it.
demo_archive="$LODGE_DATA_DIR/lodge-demo.oci.tar"
lodge mk-image --layer "$LODGE_SYSTEM_DIR/rootfs-busybox" --name lodge-demo:latest \
    -e GREETING="hello from a lodge VM" -o "$demo_archive" \
    -- sh -c 'echo "$GREETING: $(uname -sr), $(nproc) vCPUs"; cat /proc/cmdline'
lodge pull "oci-archive:$demo_archive"
echo "setup: booting a VM from the image lodge-demo"
lodge run --rm lodge-demo
