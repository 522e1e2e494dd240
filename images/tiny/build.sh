#!/usr/bin/env bash
# Build the tiny busybox stage-two root: $OUT/rootfs.sqfs (zstd squashfs).
#
#   OUT=dir images/tiny/build.sh
#
# Used by CI: seconds to build, ~1 MB, boots to RAMBOOT-STAGE2-READY.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../lib/common.sh"

need_env OUT
need_root   # so that every file in the image is owned by root
need_cmd mksquashfs file

mkdir -p "$OUT"
ROOT=$(mktemp -d "${TMPDIR:-/tmp}/ramboot-tiny.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
chmod 0755 "$ROOT"   # mktemp made it 0700; it becomes the node's /

log "installing busybox and its applet links"
busybox_for_arch
install_busybox "$ROOT" links

log "writing /sbin/init and /etc"
# busybox --list-full made sbin/init a busybox link; ours replaces it.
rm -f "$ROOT/sbin/init"
install -m 0755 "$HERE/init" "$ROOT/sbin/init"
mkdir -p "$ROOT"/{dev,proc,sys,run,tmp,root,etc/ramboot,usr/sbin,var/log}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
# Placeholder; the agent writes the node's real name before switch_root.
echo ramboot-tiny >"$ROOT/etc/hostname"
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"
printf '127.0.0.1\tlocalhost\n' >"$ROOT/etc/hosts"
normalize_mtimes "$ROOT"

log "writing rootfs.sqfs"
make_sqfs "$ROOT" "$OUT/rootfs.sqfs"

inputs=$OUT/inputs.txt
: >"$inputs"
kv "$inputs" profile tiny
kv "$inputs" arch "$ARCH"
kv "$inputs" busybox_version "$(busybox_version)"
kv "$inputs" init_sha256 "$(sha256sum "$HERE/init" | cut -d' ' -f1)"
kv "$inputs" compression zstd

log "done: $OUT/rootfs.sqfs ($(human_size "$OUT/rootfs.sqfs"))"
