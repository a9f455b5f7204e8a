#!/usr/bin/env bash
# build-deb.sh [OUTDIR] — build lodge_VERSION_amd64.deb into OUTDIR (default
# target/deb) and print its path.
#
# Staged by hand and packed with `dpkg-deb --root-owner-group --build` (no
# root or fakeroot needed), not with cargo-deb: cargo-deb is not a Debian package, and
# `cargo install cargo-deb` compiles a hundred-odd crates (minutes on two
# cores) and needs the network at test time, while dpkg-deb is already on
# every Debian machine. The package holds:
#
#   /usr/bin/lodge                         the static binary (build-release.sh)
#   /usr/lib/lodge/lodge-init              the static guest init
#   /usr/lib/lodge/build-guest.sh          builds /var/lib/lodge/system (postinst)
#   /usr/lib/lodge/lodge.config            the lodge guest kernel's config (build-guest.sh)
#   /lib/systemd/system/lodge.service      Type=notify, KillMode=process
#   /etc/lodge/lodge.env                   the daemon's settings (a conffile)
#   /usr/share/{bash-completion,zsh,fish}  completions, from `lodge completion`
#   /usr/share/man/man1/lodge*.1.gz        man pages, from `lodge man`
#
# Environment: LODGE_BIN and LODGE_INIT use prebuilt binaries instead of
# building them (the test suite passes its own; a package for users should
# carry the static release build, the default); LODGE_DEB_COMPRESSION is
# dpkg-deb's -Z (default xz; the tests use none for their debug binary).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/deb}
mkdir -p "$out"
out=$(cd "$out" && pwd)

bin=${LODGE_BIN:-}
if [ -z "$bin" ]; then
    bin=$("$repo/scripts/build-release.sh")
fi
init=${LODGE_INIT:-}
if [ -z "$init" ]; then
    (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release -p lodge-guest --bin lodge-init \
        --target x86_64-unknown-linux-gnu)
    init="${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu/release/lodge-init"
fi
[ -x "$bin" ] || { echo "build-deb: $bin is not an executable" >&2; exit 1; }
[ -x "$init" ] || { echo "build-deb: $init is not an executable" >&2; exit 1; }

version=$("$bin" --version | awk '{ print $2 }')
arch=$(dpkg --print-architecture)
stage=$(mktemp -d "$out/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/lodge_${version}_$arch"

install -D -m 0755 "$bin" "$root/usr/bin/lodge"
install -D -m 0755 "$init" "$root/usr/lib/lodge/lodge-init"
install -D -m 0755 "$repo/scripts/build-guest.sh" "$root/usr/lib/lodge/build-guest.sh"
install -D -m 0644 "$repo/guest/kernel/lodge.config" "$root/usr/lib/lodge/lodge.config"
install -D -m 0644 "$repo/packaging/lodge.service" "$root/lib/systemd/system/lodge.service"
install -D -m 0644 "$repo/packaging/lodge.env" "$root/etc/lodge/lodge.env"
install -d "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d" \
    "$root/usr/share/man/man1" "$root/usr/share/doc/lodge"
"$bin" completion bash > "$root/usr/share/bash-completion/completions/lodge"
"$bin" completion zsh > "$root/usr/share/zsh/vendor-completions/_lodge"
"$bin" completion fish > "$root/usr/share/fish/vendor_completions.d/lodge.fish"
"$bin" man "$root/usr/share/man/man1" 2>/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1
cat > "$root/usr/share/doc/lodge/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: lodge

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPY
find "$root/usr/share" -type f -exec chmod 0644 {} +

install -d "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$repo/packaging/debian/$script" "$root/DEBIAN/$script"
done
echo /etc/lodge/lodge.env > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: lodge
Version: $version
Architecture: $arch
Maintainer: lodge developers <lodge@localhost>
Installed-Size: $size
Depends: qemu-system-x86, e2fsprogs, kmod, cpio, binutils, xz-utils, zstd
Recommends: busybox-static, erofs-utils, nftables, iproute2
Section: admin
Priority: optional
Description: run OCI container images as virtual machines
 lodge pulls OCI images and boots them as VMs under QEMU, behind a
 hypeman-compatible REST API (lodge serve, a systemd service) and a
 docker-like CLI. Each VM's console is captured by its own monitor
 process, which outlives daemon restarts, without losing a byte.
CONTROL

deb="$out/lodge_${version}_$arch.deb"
dpkg-deb --root-owner-group "-Z${LODGE_DEB_COMPRESSION:-xz}" --build "$root" "$deb" >/dev/null
echo "$deb"
