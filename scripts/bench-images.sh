#!/usr/bin/env bash
# Benchmark of image pull + conversion (issue 4), measured side by side in
# one run against the same local registry:
#   1. cold `lodge pull` (fetch, verify, unpack, build the ext4 root disk)
#      vs `skopeo copy` + `umoci unpack` + `mkfs.ext4 -d` (target ratio <= 1.0),
#      and vs the same with `umoci raw unpack`, which skips umoci's mtree
#      manifest and runtime config (the fairer baseline: lodge makes neither)
#   2. a second, cached `lodge pull` of the same image (target <= 0.1 s)
#
# The image has four layers (busybox plus ~40 MiB of generated files: random
# binaries, many small text files, compressible data), built with
# `lodge mk-image` and pushed with skopeo into a `docker-registry` on a free
# loopback port. Needs: docker-registry, skopeo, umoci, hyperfine, python3
# (scripts/install-deps.sh) and the busybox rootfs of scripts/build-guest.sh
# (LODGE_SYSTEM_DIR, default /var/lib/lodge/system; only its busybox tree is
# used, no VM boots). RUNS sets hyperfine's run count (default 5).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# The binary users install (static, scripts/build-release.sh), not the
# dynamic target/release one, whose start-up is slower.
LODGE="$("$ROOT/scripts/build-release.sh")"
RUNS=${RUNS:-5}
SYSTEM=${LODGE_SYSTEM_DIR:-/var/lib/lodge/system}
BUSYBOX="$SYSTEM/rootfs-busybox"
[ -x "$BUSYBOX/bin/busybox" ] || { echo "no $BUSYBOX: run scripts/build-guest.sh $SYSTEM" >&2; exit 1; }
WORK=$(mktemp -d "${BENCH_TMP:-/tmp}/lodge-bench-images.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mean() { python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results']; print(r[int(sys.argv[2])]['mean'])" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "$1" "$2"; }

echo "generating layers..." >&2
python3 - "$WORK/layers" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(4)
def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
# Layer 2: 40 random "binaries" of 256 KiB (incompressible, 10 MiB).
for i in range(40):
    write(f"{root}/2/usr/lib/app/lib{i:02}.so", rnd.randbytes(256 << 10))
# Layer 3: 3000 small text files (a source tree, ~6 MiB).
words = [f"word{i}" for i in range(500)]
for i in range(3000):
    text = " ".join(rnd.choice(words) for _ in range(rnd.randint(50, 400))) + "\n"
    write(f"{root}/3/usr/share/app/src/{i % 30:02}/file{i:04}.txt", text.encode())
# Layer 4: 24 MiB of half-compressible data in 12 files.
for i in range(12):
    chunk = bytearray()
    while len(chunk) < (2 << 20):
        chunk += rnd.randbytes(512) + bytes(512)
    write(f"{root}/4/var/lib/app/data{i:02}.bin", bytes(chunk[: 2 << 20]))
PY
"$LODGE" mk-image --layer "$BUSYBOX" --layer "$WORK/layers/2" --layer "$WORK/layers/3" --layer "$WORK/layers/4" \
    --name bench:1 -o "$WORK/image.tar" -- sh -c 'echo bench'
echo "image: $(du -sh "$WORK/layers" | cut -f1) of files, $(du -h "$WORK/image.tar" | cut -f1) compressed" >&2

REG_PORT=$(free_port)
mkdir -p "$WORK/registry"
cat > "$WORK/registry/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry/storage
http:
  addr: 127.0.0.1:$REG_PORT
YML
docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry/log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$REG_PORT") 2>/dev/null && break; sleep 0.1; done
REF="127.0.0.1:$REG_PORT/bench/app:1"
skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci-archive:$WORK/image.tar" "docker://$REF"

DATA="$WORK/lodge data"
mkdir -p "$DATA"
API_PORT=$(free_port)
export LODGE_NETWORK="${LODGE_NETWORK:-off}" # never the host's network
export LODGE_DATA_DIR="$DATA" LODGE_SYSTEM_DIR="$SYSTEM" LODGE_LISTEN="127.0.0.1:$API_PORT" \
    LODGE_BASE_URL="http://127.0.0.1:$API_PORT" LODGE_ACCEL="${LODGE_ACCEL:-tcg}"
"$LODGE" serve >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do "$LODGE" images >/dev/null 2>&1 && break; sleep 0.1; done
LODGE_API_KEY=$("$LODGE" token)
export LODGE_API_KEY

# Both sides start cold: no cached blobs, no disk, page cache dropped of
# nothing in particular (the registry's files stay warm for both).
RESET_LODGE="$LODGE rmi $REF >/dev/null 2>&1 || true; rm -f '$DATA'/images/blobs/sha256/*; sync"
RESET_BASE="rm -rf $WORK/oci $WORK/bundle $WORK/base.ext4 $WORK/raw $WORK/raw.ext4; sync"
size=$(( $(du -sb "$WORK/layers" | cut -f1) + $(du -sb "$BUSYBOX" | cut -f1) ))
blocks=$(( (size + size / 4 + (16 << 20)) / 4096 ))
BASELINE="skopeo --insecure-policy copy --quiet --src-tls-verify=false docker://$REF oci:$WORK/oci:app \
 && umoci unpack --image $WORK/oci:app $WORK/bundle >/dev/null \
 && mkfs.ext4 -q -F -O ^has_journal -b 4096 -d $WORK/bundle/rootfs $WORK/base.ext4 $blocks"
BASELINE_RAW="skopeo --insecure-policy copy --quiet --src-tls-verify=false docker://$REF oci:$WORK/oci:app \
 && umoci raw unpack --image $WORK/oci:app $WORK/raw >/dev/null \
 && mkfs.ext4 -q -F -O ^has_journal -b 4096 -d $WORK/raw $WORK/raw.ext4 $blocks"

echo
echo "== 1. cold pull + convert: lodge vs skopeo copy + umoci unpack + mkfs.ext4 -d"
hyperfine --runs "$RUNS" --warmup 1 --export-json "$WORK/cold.json" \
    -n "lodge pull" --prepare "$RESET_LODGE" "$LODGE pull -q $REF" \
    -n "skopeo+umoci+mkfs" --prepare "$RESET_BASE" "$BASELINE" \
    -n "skopeo+umoci raw+mkfs" --prepare "$RESET_BASE" "$BASELINE_RAW" >&2
t_lodge=$(mean "$WORK/cold.json" 0)
t_base=$(mean "$WORK/cold.json" 1)
t_raw=$(mean "$WORK/cold.json" 2)
cold_ratio=$(ratio "$t_lodge" "$t_base")
raw_ratio=$(ratio "$t_lodge" "$t_raw")
echo "lodge $(printf %.3f "$t_lodge") s, baseline $(printf %.3f "$t_base") s, ratio $cold_ratio (target <= 1.0)"
echo "lodge $(printf %.3f "$t_lodge") s, raw-unpack baseline $(printf %.3f "$t_raw") s, ratio $raw_ratio"

# Same content on both sides: compare a few files inside both disks (the
# raw-unpack baseline ran last, so its disk is the one left).
for f in /usr/lib/app/lib07.so /usr/share/app/src/05/file0005.txt /var/lib/app/data03.bin /bin/busybox; do
    disk=$(ls "$DATA"/images/disks/*.ext4)
    cmp <(debugfs -R "cat $f" "$disk" 2>/dev/null) <(debugfs -R "cat $f" "$WORK/raw.ext4" 2>/dev/null) \
        || { echo "disks differ at $f" >&2; exit 1; }
done

echo
echo "== 2. second pull of the same image (cached)"
"$LODGE" pull -q "$REF" >/dev/null
hyperfine -N --runs $((RUNS * 4)) --warmup 2 --export-json "$WORK/cached.json" \
    -n "lodge pull (cached)" "$LODGE pull -q $REF" >&2
t_cached=$(mean "$WORK/cached.json" 0)
echo "cached pull $(printf %.3f "$t_cached") s (target <= 0.1 s)"

echo
echo "summary: cold ratio $cold_ratio (lodge $(printf %.3f "$t_lodge") s vs $(printf %.3f "$t_base") s), vs umoci raw unpack $raw_ratio ($(printf %.3f "$t_raw") s), cached pull $(printf %.3f "$t_cached") s"
