#!/usr/bin/env bash
# build-guest.sh [--kernel lodge|debian] OUTDIR — build what a lodge guest boots from:
#
#   OUTDIR/vmlinux          the kernel as an uncompressed ELF: QEMU enters it
#                           through PVH (much faster to boot under TCG); preferred
#   OUTDIR/vmlinuz          the same kernel as a bzImage (the fallback)
#   OUTDIR/initrd.img       lodge-init as /init (+ the kernel modules it loads,
#                           with Debian's kernel only)
#   OUTDIR/rootfs-busybox/  a minimal root tree (busybox-static) for demos and tests
#   OUTDIR/kernel-version   the kernel release, e.g. 6.1.192-lodge or 6.1.0-56-amd64
#   OUTDIR/kernel-flavor    which kernel: lodge or debian
#   OUTDIR/cache/           Debian's kernel package and its extracted tree
#
# Kernels (--kernel, or LODGE_GUEST_KERNEL; default lodge):
#   lodge   built here from Debian's kernel source package (linux-source-6.1,
#           installed by scripts/install-deps.sh; offline once installed) with
#           guest/kernel/lodge.config applied over `make allnoconfig`: everything
#           a lodge VM uses built in, no modules. Cached outside the clone, by
#           hash of the config fragment and the source version, in
#           ${XDG_CACHE_HOME:-~/.cache}/lodge/kernel/<hash>/ (LODGE_KERNEL_CACHE
#           overrides the lodge/kernel dir); rebuilt when either changes.
#           Without the source package, falls back to debian with a warning.
#   debian  Debian's prebuilt kernel (linux-image-amd64's current 6.1 build),
#           with the ~24 modules the guest needs loaded from the initrd.
#
# Idempotent: every step is skipped when its output is newer than its inputs,
# and a kernel package already in the cache is reused without asking apt, so
# a second run is quick and works offline.
#
# Environment:
#   LODGE_GUEST_KERNEL=K     lodge or debian (the --kernel option wins)
#   LODGE_INIT=PATH          use this static lodge-init instead of building one
#   LODGE_KERNEL_PACKAGE=P   Debian kernel package to use (default: what
#                            linux-image-amd64 depends on)
#   LODGE_REFRESH_KERNEL=1   ask apt for the current kernel even if one is cached
set -euo pipefail

usage() {
    echo "usage: $0 [--kernel lodge|debian] OUTDIR" >&2
    exit 2
}
flavor=${LODGE_GUEST_KERNEL:-lodge}
outarg=
while [ $# -gt 0 ]; do
    case $1 in
    -h | --help) usage ;;
    --kernel) [ $# -ge 2 ] || usage; flavor=$2; shift 2 ;;
    --kernel=*) flavor=${1#--kernel=}; shift ;;
    -*) usage ;;
    *) [ -z "$outarg" ] || usage; outarg=$1; shift ;;
    esac
done
[ -n "$outarg" ] || usage
case $flavor in
lodge | debian) ;;
*) echo "build-guest: --kernel must be lodge or debian, got '$flavor'" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
script="$repo/scripts/build-guest.sh"
# The config fragment: in the source tree, or next to this script where the
# Debian package installs both (/usr/lib/lodge).
fragment="$repo/guest/kernel/lodge.config"
[ -e "$fragment" ] || fragment="$(cd "$(dirname "$0")" && pwd)/lodge.config"
mkdir -p "$outarg"
out=$(cd "$outarg" && pwd)
cache="$out/cache"
mkdir -p "$cache"

# Modules the guest loads with Debian's kernel, by name; their dependencies
# are added from modules.dep, built-in ones are skipped. button+evdev let the
# guest see the ACPI power button (graceful stop); virtio_balloon lets the
# host take back memory the guest does not need (memory reclaim, free page
# reporting). The lodge kernel has all of these built in
# (guest/kernel/lodge.config).
modules=(
    virtio_pci virtio_blk virtio_console virtio_net
    ext4 overlay erofs
    vsock vmw_vsock_virtio_transport
    button evdev
    virtio_balloon
)

say() { echo "build-guest: $*"; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

# stale OUTPUT INPUT... : true when OUTPUT is missing or older than an input.
stale() {
    local output=$1 input
    shift
    [ -e "$output" ] || return 0
    for input in "$@"; do
        [ "$input" -nt "$output" ] && return 0
    done
    return 1
}

# --- 1. the kernel -----------------------------------------------------------

# The lodge kernel needs Debian's kernel source and a compiler; without them
# the guest gets Debian's prebuilt kernel instead.
source_pkg=linux-source-6.1
source_tar=/usr/src/$source_pkg.tar.xz
if [ "$flavor" = lodge ]; then
    missing=()
    [ -r "$fragment" ] || missing+=("lodge.config")
    [ -r "$source_tar" ] || missing+=("$source_pkg")
    for tool in make gcc flex bison bc; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ -e /usr/include/libelf.h ] || missing+=(libelf-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "build-guest: warning: cannot build the lodge kernel (missing: ${missing[*]};" \
            "run scripts/install-deps.sh): using Debian's kernel" >&2
        flavor=debian
    fi
fi

# Outputs of the other kernel are replaced as a whole, never mixed.
previous=$(cat "$out/kernel-flavor" 2>/dev/null || echo debian)
if [ "$previous" != "$flavor" ]; then
    say "kernel: switching from $previous to $flavor"
    rm -f "$out/vmlinux" "$out/vmlinuz" "$out/initrd.img" "$out/kernel-version"
fi

# install_if_changed SRC DEST: copy SRC to DEST unless DEST has the same bytes.
install_if_changed() {
    if cmp -s "$1" "$2"; then
        return 1
    fi
    install -m 0644 "$1" "$2.tmp"
    mv "$2.tmp" "$2"
}

lodge_kernel() {
    local version kcache hash dest src obj lock t0 secs line sym
    version=$(dpkg-query -W -f='${Version}' "$source_pkg" 2>/dev/null || true)
    [ -n "$version" ] || version=$(stat -c %Y "$source_tar")
    kcache=${LODGE_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lodge/kernel}
    hash=$({ echo "$source_pkg $version"; cat "$fragment"; } | sha256sum | cut -c1-16)
    dest="$kcache/$hash"
    mkdir -p "$kcache"
    # One build at a time per cache (the source and object trees are shared).
    exec {lock}>"$kcache/.lock"
    flock "$lock"
    if [ -e "$dest/vmlinux" ] && [ -e "$dest/bzImage" ] && [ -e "$dest/kernel-version" ]; then
        say "lodge kernel: cached $hash ($(cat "$dest/kernel-version"))"
    else
        src="$kcache/src"
        obj="$kcache/obj"
        if [ "$(cat "$src/.lodge-source" 2>/dev/null)" != "$source_pkg $version" ]; then
            say "lodge kernel: unpacking $source_pkg $version"
            rm -rf "$src" "$obj"
            mkdir -p "$src"
            tar -xJf "$source_tar" -C "$src" --strip-components=1
            echo "$source_pkg $version" > "$src/.lodge-source"
        fi
        mkdir -p "$obj"
        make -s -C "$src" O="$obj" KCONFIG_ALLCONFIG="$fragment" allnoconfig >/dev/null
        make -s -C "$src" O="$obj" olddefconfig >/dev/null
        # kconfig drops a symbol whose dependencies are unmet without a word:
        # every line of the fragment must be in the result.
        while read -r line; do
            case $line in
            CONFIG_*=*)
                grep -qxF "$line" "$obj/.config" ||
                    die "lodge.config: $line did not survive olddefconfig (now: $(grep "^${line%%=*}=" "$obj/.config" || echo unset))"
                ;;
            "# CONFIG_"*" is not set")
                sym=${line#\# }
                sym=${sym%% *}
                if grep -q "^$sym=" "$obj/.config"; then
                    die "lodge.config: $sym is set although the fragment unsets it"
                fi
                ;;
            esac
        done < "$fragment"
        say "lodge kernel: building $hash with -j$(nproc) (a few minutes per core the first time)"
        t0=$(date +%s)
        nice make -s -C "$src" O="$obj" -j"$(nproc)" bzImage >"$kcache/build.log" 2>&1 ||
            { tail -n 30 "$kcache/build.log" >&2; die "lodge kernel build failed (log: $kcache/build.log)"; }
        secs=$(( $(date +%s) - t0 ))
        rm -rf "$dest.tmp"
        mkdir -p "$dest.tmp"
        cp "$obj/vmlinux" "$dest.tmp/vmlinux"
        cp "$obj/arch/x86/boot/bzImage" "$dest.tmp/bzImage"
        cp "$obj/.config" "$dest.tmp/config"
        make -s -C "$src" O="$obj" kernelrelease > "$dest.tmp/kernel-version"
        echo "$secs" > "$dest.tmp/build-seconds"
        rm -rf "$dest"
        mv "$dest.tmp" "$dest"
        say "lodge kernel: built $(cat "$dest/kernel-version") in ${secs} s"
    fi
    # The ELF kernel without its symbol table, as the bzImage carries it:
    # QEMU keeps an ELF kernel's symbols in its heap for its disassembler
    # (1.1 MiB per VM, scripts/bench-density.sh); the guest needs none.
    if [ ! -e "$dest/vmlinux.stripped" ]; then
        objcopy -R .comment -S "$dest/vmlinux" "$dest/vmlinux.stripped.tmp"
        mv "$dest/vmlinux.stripped.tmp" "$dest/vmlinux.stripped"
    fi
    exec {lock}>&-

    install_if_changed "$dest/vmlinux.stripped" "$out/vmlinux" && say "vmlinux: lodge $(cat "$dest/kernel-version")" || say "vmlinux: up to date"
    install_if_changed "$dest/bzImage" "$out/vmlinuz" && say "vmlinuz: lodge $(cat "$dest/kernel-version")" || say "vmlinuz: up to date"
    install_if_changed "$dest/kernel-version" "$out/kernel-version" || true
    kernel_stamp="$out/vmlinux"
}

debian_kernel() {
# Debian's kernel package --------------------------------------------------

apt_updated=
apt_update_once() {
    if [ -z "$apt_updated" ]; then
        say "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
}

resolve_kernel_package() {
    if [ -n "${LODGE_KERNEL_PACKAGE:-}" ]; then
        echo "$LODGE_KERNEL_PACKAGE"
        return
    fi
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    if [ -z "$pkg" ]; then
        apt_update_once >&2
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    fi
    [ -n "$pkg" ] || die "cannot resolve linux-image-amd64 to a versioned kernel package"
    echo "$pkg"
}

deb=
if [ -z "${LODGE_REFRESH_KERNEL:-}" ] && [ -z "${LODGE_KERNEL_PACKAGE:-}" ]; then
    deb=$(ls -t "$cache"/linux-image-*.deb 2>/dev/null | head -n 1 || true)
fi
if [ -n "$deb" ]; then
    say "kernel package: cached $(basename "$deb")"
else
    pkg=$(resolve_kernel_package)
    deb=$(ls -t "$cache/${pkg}"_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
        say "kernel package: downloading $pkg"
        (cd "$cache" && apt-get download -q -o APT::Sandbox::User=root "$pkg") ||
            { apt_update_once && (cd "$cache" && apt-get download -q -o APT::Sandbox::User=root "$pkg"); } ||
            die "apt-get download $pkg failed"
        deb=$(ls -t "$cache/${pkg}"_*.deb | head -n 1)
    else
        say "kernel package: cached $(basename "$deb")"
    fi
fi

# extract it ------------------------------------------------------------

tree="$cache/kernel-tree"
stamp="$tree/.extracted-from"
if [ ! -e "$stamp" ] || [ "$(cat "$stamp")" != "$(basename "$deb")" ] || stale "$stamp" "$deb"; then
    say "extracting $(basename "$deb")"
    rm -rf "$tree"
    mkdir -p "$tree"
    dpkg-deb -x "$deb" "$tree"
    kver=$(ls "$tree/lib/modules" | head -n 1)
    [ -n "$kver" ] || die "no lib/modules in $(basename "$deb")"
    # The package ships no modules.dep (postinst runs depmod); make one.
    depmod -b "$tree" "$kver"
    basename "$deb" > "$stamp"
else
    say "kernel tree: up to date"
fi
kver=$(ls "$tree/lib/modules" | head -n 1)
echo "$kver" > "$out/kernel-version.tmp"
if cmp -s "$out/kernel-version.tmp" "$out/kernel-version"; then
    rm "$out/kernel-version.tmp"
else
    mv "$out/kernel-version.tmp" "$out/kernel-version"
fi

if stale "$out/vmlinuz" "$stamp"; then
    install -m 0644 "$tree/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
    mv "$out/vmlinuz.tmp" "$out/vmlinuz"
    say "vmlinuz: $kver"
else
    say "vmlinuz: up to date ($kver)"
fi

# The same kernel as an uncompressed ELF. QEMU boots it through its PVH entry
# point (Debian builds CONFIG_PVH=y), skipping the in-guest decompression of
# the xz-compressed bzImage: under software emulation that saves ~2.5 s per
# boot. Cloud Hypervisor boots this form too.
extract_vmlinux() {
    local image=$1 dest=$2 magic off decompress
    for magic in xz zstd gzip; do
        case $magic in
        xz) off=$(LC_ALL=C grep -obUaP '\xfd\x37\x7a\x58\x5a\x00' "$image" | head -n 1 | cut -d: -f1); decompress="xz -dcq" ;;
        zstd) off=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$image" | head -n 1 | cut -d: -f1); decompress="zstd -dcq" ;;
        gzip) off=$(LC_ALL=C grep -obUaP '\x1f\x8b\x08' "$image" | head -n 1 | cut -d: -f1); decompress="gzip -dcq" ;;
        esac
        [ -n "$off" ] || continue
        # The payload is followed by other data: decompressors complain about
        # trailing garbage, so judge by the result, not the exit status.
        tail -c "+$((off + 1))" "$image" | $decompress > "$dest" 2>/dev/null || true
        if [ "$(head -c 4 "$dest" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
            return 0
        fi
    done
    return 1
}
if stale "$out/vmlinux" "$out/vmlinuz"; then
    if extract_vmlinux "$out/vmlinuz" "$out/vmlinux.tmp"; then
        mv "$out/vmlinux.tmp" "$out/vmlinux"
        say "vmlinux: extracted ($(du -h "$out/vmlinux" | cut -f1), boots via PVH)"
    else
        rm -f "$out/vmlinux.tmp"
        say "vmlinux: could not extract an ELF kernel from vmlinuz (use vmlinuz)"
    fi
else
    say "vmlinux: up to date"
fi

kernel_stamp=$stamp
}

if [ "$flavor" = lodge ]; then
    lodge_kernel
else
    debian_kernel
fi
echo "$flavor" > "$out/kernel-flavor"

# --- 3. lodge-init --------------------------------------------------------------

if [ -n "${LODGE_INIT:-}" ]; then
    init_bin=$LODGE_INIT
    [ -x "$init_bin" ] || die "LODGE_INIT=$init_bin is not an executable"
else
    say "lodge-init: cargo build (static)"
    (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release -p lodge-guest --bin lodge-init \
        --target x86_64-unknown-linux-gnu)
    init_bin="${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-gnu/release/lodge-init"
fi
if readelf -lW "$init_bin" 2>/dev/null | grep -q 'program interpreter'; then
    die "$init_bin is dynamically linked; it must be static"
fi

# --- 4. the initrd ----------------------------------------------------------------

if stale "$out/initrd.img" "$init_bin" "$kernel_stamp" "$script"; then
    stage="$cache/initrd-root"
    rm -rf "$stage"
    mkdir -p "$stage"/{proc,sys,dev,lower,upper,newroot}
    if [ "$(id -u)" = 0 ]; then
        mknod -m 0600 "$stage/dev/console" c 5 1
    fi
    strip --strip-all -o "$stage/init" "$init_bin" 2>/dev/null || cp "$init_bin" "$stage/init"
    chmod 0755 "$stage/init"

    # Debian's kernel: the modules, their dependencies first. The lodge
    # kernel has everything built in: no modules, no order file.
    order=()
    builtin=()
    if [ "$flavor" = debian ]; then
        mkdir -p "$stage/lib/modules"
        # Resolve dependencies (including soft dependencies such as ext4's crc32c)
        # in load order; modprobe prints "builtin NAME" for built-in modules.
        declare -A seen=()
        order=()
        builtin=()
        for name in "${modules[@]}"; do
            deps=$(modprobe --show-depends -d "$tree" -S "$kver" "$name") ||
                die "module $name not found in $kver"
            while read -r kind path _; do
                case $kind in
                builtin) builtin+=("$path") ;;
                insmod)
                    if [ -z "${seen[$path]:-}" ]; then
                        seen[$path]=1
                        order+=("$path")
                    fi
                    ;;
                esac
            done <<<"$deps"
        done

        : > "$stage/lib/modules/lodge.order"
        for path in "${order[@]}"; do
            rel=${path#"$tree"}
            dest="$stage$rel"
            mkdir -p "$(dirname "$dest")"
            case $path in
            *.ko.xz) xz -dc "$path" > "${dest%.xz}"; rel=${rel%.xz} ;;
            *.ko.zst) zstd -qdc "$path" > "${dest%.zst}"; rel=${rel%.zst} ;;
            *.ko.gz) gzip -dc "$path" > "${dest%.gz}"; rel=${rel%.gz} ;;
            *) cp "$path" "$dest" ;;
            esac
            echo "$rel" >> "$stage/lib/modules/lodge.order"
        done

    fi

    # Uncompressed: the kernel unpacks it fastest (no decompressor to run
    # under software emulation), and its size only costs host page cache.
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible) > "$out/initrd.img.tmp"
    mv "$out/initrd.img.tmp" "$out/initrd.img"
    say "initrd.img: $(du -h "$out/initrd.img" | cut -f1), ${#order[@]} modules:" \
        "$(for p in "${order[@]+"${order[@]}"}"; do basename "$p" .ko; done | tr '\n' ' ')"
    if [ ${#builtin[@]} -gt 0 ]; then
        say "built into the kernel (not in the initrd): $(printf '%s\n' "${builtin[@]}" | sort -u | tr '\n' ' ')"
    fi
else
    say "initrd.img: up to date"
fi

# --- 5. the busybox root file system --------------------------------------------------

busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox not found (install busybox-static)"
busybox=$(readlink -f "$busybox")
if readelf -lW "$busybox" 2>/dev/null | grep -q 'program interpreter'; then
    die "$busybox is dynamically linked (install busybox-static)"
fi

rootfs="$out/rootfs-busybox"
rootfs_stamp="$cache/rootfs-busybox.built"
if [ ! -d "$rootfs" ] || stale "$rootfs_stamp" "$busybox" "$script"; then
    tmp="$out/rootfs-busybox.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,home,var/log,run,mnt}
    install -d -m 1777 "$tmp/tmp"
    install -d -m 0700 "$tmp/root"
    install -m 0755 "$busybox" "$tmp/bin/busybox"
    count=0
    while read -r applet; do
        [ "$applet" = bin/busybox ] && continue
        [ -e "$tmp/$applet" ] || [ -L "$tmp/$applet" ] && continue
        mkdir -p "$tmp/$(dirname "$applet")"
        ln -s /bin/busybox "$tmp/$applet"
        count=$((count + 1))
    done < <("$busybox" --list-full)
    cat > "$tmp/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat > "$tmp/etc/group" <<'EOF'
root:x:0:
tty:x:5:
nogroup:x:65534:
EOF
    echo "lodge" > "$tmp/etc/hostname"
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' > "$tmp/etc/hosts"
    rm -rf "$rootfs"
    mv "$tmp" "$rootfs"
    touch "$rootfs_stamp"
    say "rootfs-busybox: $(du -sh "$rootfs" | cut -f1), $count applets"
else
    say "rootfs-busybox: up to date"
fi

say "done ($flavor kernel): $out/{vmlinuz,vmlinux,initrd.img,rootfs-busybox}"
