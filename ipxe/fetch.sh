#!/usr/bin/env bash
# Put the network boot binaries ramboot serves (TFTP and HTTP) into DEST
# (default: this directory).
#
# iPXE, from Debian's `ipxe` package (iPXE 1.0.0+git-20190125 on bookworm):
#   undionly.kpxe  BIOS PXE ROMs chainload it (DHCP arch 0)
#   ipxe.efi       UEFI x64 (arch 7/9), with its own NIC drivers
#   snponly.efi    UEFI x64 using the firmware's SNP driver
#
# The signed chain for Secure Boot (a node or profile with `boot_chain: signed`),
# from Debian's signed packages, unpacked (never installed: their maintainer
# scripts would run grub-install on this host):
#   shimx64.efi    shim-signed's shimx64.efi.signed, signed by Microsoft
#   mmx64.efi      shim-helpers-amd64-signed's MokManager (shim runs it when a
#                  verification fails, so the console says why)
#   grubx64.efi    grub-efi-amd64-signed's grubnetx64.efi.signed, signed by Debian;
#                  shim loads it from the directory it was loaded from
# ARCHES="amd64 arm64" also unpacks the arm64 chain (shimaa64.efi, mmaa64.efi,
# grubaa64.efi), for arm64 nodes (DHCP arch 11); it needs
# `dpkg --add-architecture arm64 && apt-get update`.
# The downloaded .debs are kept in $CACHE (default ~/.cache/ramboot/debs), so a
# second run needs no network. Pin versions with SHIM_VERSION / GRUB_VERSION.
# SIGNED=0 skips the signed chain; SIGNED=1 fails without it; by default a failed
# download only warns (iPXE serves every node not on `boot_chain: signed`).
#
# The binaries are not committed: run this on the server (ramboot-lab does).
set -euo pipefail
dest=${1:-$(dirname "$0")}
src=/usr/lib/ipxe
if [ ! -f "$src/undionly.kpxe" ]; then
    echo "ipxe/fetch.sh: installing Debian package ipxe" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ipxe >&2
fi
mkdir -p "$dest"
for f in undionly.kpxe ipxe.efi snponly.efi; do
    install -m 0644 "$src/$f" "$dest/$f"
done
echo "ipxe/fetch.sh: $(cd "$dest" && ls undionly.kpxe ipxe.efi snponly.efi | tr '\n' ' ')in $dest" >&2

signed=${SIGNED:-auto}
[ "$signed" = 0 ] && exit 0
cache=${CACHE:-${HOME:-/root}/.cache/ramboot/debs}
mkdir -p "$cache"
# One .deb per package and architecture in the cache: the newest apt knows, or
# the pinned version.
fetch_deb() {
    local pkg=$1 arch=$2 version=${3:-}
    local found
    found=$(find "$cache" -maxdepth 1 -name "${pkg}_${version:+${version//:/%3a}}*_${arch}.deb" -print -quit)
    if [ -z "$found" ]; then
        echo "ipxe/fetch.sh: downloading $pkg:$arch${version:+=$version} into $cache" >&2
        (cd "$cache" && apt-get download -q -o APT::Sandbox::User=root "$pkg:$arch${version:+=$version}" >&2) || return 1
        found=$(find "$cache" -maxdepth 1 -name "${pkg}_*_${arch}.deb" -print -quit)
    fi
    printf '%s\n' "$found"
}
no_signed_chain() {
    echo "ipxe/fetch.sh: cannot download $1 (apt-get update? network?): no signed chain for Secure Boot nodes" >&2
    [ "$signed" = auto ] && exit 0
    exit 1
}
unpack=$(mktemp -d "${TMPDIR:-/tmp}/ramboot-signed.XXXXXX")
trap 'rm -rf "$unpack"' EXIT
for arch in ${ARCHES:-amd64}; do
    case $arch in
        amd64) efi=x64 grub_dir=x86_64-efi-signed ;;
        arm64) efi=aa64 grub_dir=arm64-efi-signed ;;
        *) echo "ipxe/fetch.sh: no signed chain for $arch" >&2; exit 1 ;;
    esac
    for pkg in shim-signed:"${SHIM_VERSION:-}" "shim-helpers-$arch-signed:" "grub-efi-$arch-signed:${GRUB_VERSION:-}"; do
        deb=$(fetch_deb "${pkg%%:*}" "$arch" "${pkg#*:}") || no_signed_chain "${pkg%%:*}:$arch"
        dpkg-deb -x "$deb" "$unpack/$arch"
    done
    install -m 0644 "$unpack/$arch/usr/lib/shim/shim$efi.efi.signed" "$dest/shim$efi.efi"
    install -m 0644 "$unpack/$arch/usr/lib/shim/mm$efi.efi.signed" "$dest/mm$efi.efi"
    install -m 0644 "$unpack/$arch/usr/lib/grub/$grub_dir/grubnet$efi.efi.signed" "$dest/grub$efi.efi"
    echo "ipxe/fetch.sh: shim$efi.efi mm$efi.efi grub$efi.efi (signed chain, $arch) in $dest" >&2
done
