#!/usr/bin/env bash
# Put the iPXE binaries ramboot serves over TFTP into DEST (default: this directory).
#
# They come from Debian's `ipxe` package (iPXE 1.0.0+git-20190125 on bookworm):
#   undionly.kpxe  BIOS PXE ROMs chainload it (DHCP arch 0)
#   ipxe.efi       UEFI x64 (arch 7/9), with its own NIC drivers
#   snponly.efi    UEFI x64 using the firmware's SNP driver
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
