#!/usr/bin/env bash
# Build the stage-one set: $OUT/vmlinuz + $OUT/initrd.img (newc cpio, zstd).
#
#   OUT=dir  AGENT=/path/to/static/ramboot-agent  CACHE=dir  images/stage1/build.sh
#
# The kernel is Debian's current linux-image-$ARCH target (ARCH=amd64 unless set:
# see lib/common.sh), downloaded once into
# $CACHE; later builds reuse it and need no network (pin it with KERNEL_PACKAGE).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../lib/common.sh"
source "$HERE/../lib/kernel.sh"

need_env OUT AGENT CACHE
need_root   # mknod /dev/console
need_cmd apt-get apt-cache dpkg-deb depmod modprobe cpio zstd file
[[ -f $AGENT && -x $AGENT ]] || die "AGENT=$AGENT is not an executable file"
# A dynamically linked agent would die in the initramfs, which has no libc.
if file -L "$AGENT" | grep -q ELF && ! file -L "$AGENT" | grep -Eq 'statically linked|static-pie linked'; then
    warn "AGENT=$AGENT is dynamically linked; it will not run in the initramfs"
fi

# NIC drivers: virtio for VMs, Intel/Mellanox/Broadcom for common servers.
NIC_MODULES="e1000 e1000e virtio_pci virtio_net igb ixgbe i40e mlx5_core bnxt_en"
# The image is a squashfs on a loop device under an overlay; crc32c_generic
# because TCG and some old CPUs lack SSE4.2 for crc32c_intel; efivarfs for the
# Secure Boot state the agent reports.
FS_MODULES="squashfs overlay loop crc32c_generic efivarfs"

mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)
kernel_fetch

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/ramboot-stage1.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

log "collecting the module closure"
declare -A seen=()
included=() builtin=() missing=() nic_ok=() fs_ok=()
for mod in $NIC_MODULES $FS_MODULES; do
    # -C /dev/null: the host's modprobe.d (blacklists, options) must not leak in.
    if ! deps=$(modprobe -C /dev/null -d "$KROOT" -S "$KVER" --show-depends "$mod" 2>/dev/null); then
        warn "module $mod does not exist in $KVER; skipping it"
        missing+=("$mod")
        continue
    fi
    case " $NIC_MODULES " in *" $mod "*) nic_ok+=("$mod") ;; *) fs_ok+=("$mod") ;; esac
    while read -r verb path _; do
        case $verb in
            insmod)
                rel=${path#"$KROOT"/}
                [[ -n ${seen[$rel]:-} ]] && continue
                seen[$rel]=1
                included+=("$rel")
                ;;
            builtin) builtin+=("$path") ;;
        esac
    done <<<"$deps"
done
(cd "$KROOT" && cp --parents -t "$STAGE" "${included[@]}")
# depmod needs these to order modules and to know what is built in.
for f in modules.order modules.builtin modules.builtin.modinfo; do
    [[ -e $KROOT/lib/modules/$KVER/$f ]] && cp "$KROOT/lib/modules/$KVER/$f" "$STAGE/lib/modules/$KVER/"
done
# Regenerate modules.dep/.alias/... for just the shipped modules, so the
# initramfs never refers to a module it does not have.
depmod -b "$STAGE" "$KVER"
log "${#included[@]} module files, $(du -sh "$STAGE/lib/modules" | cut -f1) uncompressed"

log "assembling the initramfs tree"
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,newroot,etc/ramboot}
busybox_for_arch
install_busybox "$STAGE"
install -m 0755 "$HERE/init" "$STAGE/init"
install -m 0755 "$HERE/udhcpc.script" "$STAGE/etc/udhcpc.script"
install -m 0755 "$AGENT" "$STAGE/bin/ramboot-agent"
cat >"$STAGE/etc/ramboot/stage1.conf" <<CONF
# Written by images/stage1/build.sh; sourced by /init.
NIC_MODULES="${nic_ok[*]}"
FS_MODULES="${fs_ok[*]}"
CONF
# The kernel opens /dev/console for /init before anything is mounted.
mknod -m 0600 "$STAGE/dev/console" c 5 1
mknod -m 0666 "$STAGE/dev/null" c 1 3
normalize_mtimes "$STAGE"

log "writing initrd.img (cpio newc, zstd -19)"
(cd "$STAGE" && find . -mindepth 1 -printf '%P\0' | LC_ALL=C sort -z \
    | cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) \
    | zstd -q -19 -T0 >"$OUT/initrd.img.tmp"
mv -f "$OUT/initrd.img.tmp" "$OUT/initrd.img"
log "copying vmlinuz"
install -m 0644 "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"

log "writing inputs.txt"
inputs=$OUT/inputs.txt
: >"$inputs"
kv "$inputs" kernel_package "$KPKG"
kv "$inputs" kernel_version "$KPKG_VERSION"
kv "$inputs" kernel_release "$KVER"
kv "$inputs" arch "$ARCH"
kv "$inputs" busybox_version "$(busybox_version)"
kv "$inputs" agent_sha256 "$(sha256sum "$AGENT" | cut -d' ' -f1)"
kv "$inputs" init_sha256 "$(sha256sum "$HERE/init" | cut -d' ' -f1)"
kv "$inputs" modules_requested "$NIC_MODULES $FS_MODULES"
kv "$inputs" modules_missing "${missing[*]}"
kv "$inputs" modules_builtin "${builtin[*]}"
kv "$inputs" modules_included "$(printf '%s\n' "${included[@]##*/}" | sed 's/\.ko.*//' | sort | tr '\n' ' ' | sed 's/ $//')"

log "done: $OUT/vmlinuz ($(human_size "$OUT/vmlinuz")), $OUT/initrd.img ($(human_size "$OUT/initrd.img"))"
