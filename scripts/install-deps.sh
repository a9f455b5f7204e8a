#!/usr/bin/env bash
# install-deps.sh [--check] — install the Debian packages lodge needs.
#
# Idempotent and quick: asks dpkg which packages are missing and runs
# apt-get (update + install) only when some are. With --check it installs
# nothing and exits 1 if something is missing.
set -euo pipefail

packages=(
    qemu-system-x86   # the hypervisor (7.2 on bookworm)
    busybox-static    # the demo/test root file system
    e2fsprogs         # mkfs.ext4 -d: image and overlay disks
    erofs-utils       # mkfs.erofs: read-only image disks
    kmod              # depmod/modprobe: resolving the guest's kernel modules
    cpio              # packing the initrd
    xz-utils zstd lz4 # decompressing kernel modules and images; standby compression
    binutils          # strip/readelf for the static guest init
    libc6-dev         # libc.a, for the statically linked guest init
    docker-registry   # a real OCI registry on loopback for tests
    skopeo umoci      # reference tools for image pull/unpack comparisons
    python3-venv      # hypeman's Python client for API compatibility tests
    tmux              # demos; the exec tests drive a real terminal with it
    curl              # scripts/bench-exec.sh calls the API directly
    hyperfine         # benchmarks
    nftables          # nft: lodge's own `inet lodge` firewall table (lodge-net)
    iproute2          # ip, bridge, tc: the network tests' namespaces and traffic control
    jq                # service_e2e: `lodge ps --format json` must parse with jq
    zsh fish          # service tests: the generated completions must parse (zsh -n, fish -n)
    systemd           # systemd-analyze verify of packaging/lodge.service
    caddy             # the ingress benchmark's reference reverse proxy
    wrk               # the ingress benchmark's load generator
    pebble            # an ACME test server: the ingress's TLS certificates in tests
    openssl           # the ingress TLS test's CA for pebble's own HTTPS
    linux-source-6.1  # the lodge guest kernel's source (scripts/build-guest.sh)
    make gcc bc       # building the lodge guest kernel
    flex bison        # the kernel's kconfig parser
    libelf-dev        # the kernel build's objtool
)

check_only=
case "${1:-}" in
"") ;;
--check) check_only=1 ;;
*) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#packages[@]} packages present"
    exit 0
fi
echo "install-deps: missing: ${missing[*]}"
[ -z "$check_only" ] || exit 1

sudo=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: run as root (or install sudo)" >&2; exit 1; }
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${missing[*]}"
