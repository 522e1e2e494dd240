#!/usr/bin/env bash
# Build the compute-node profile: Debian bookworm + systemd + KVM/libvirt + iSCSI.
#
#   OUT=dir CACHE=dir images/compute-node/build.sh
#
# Writes $OUT/rootfs.sqfs (~137 MB) and $OUT/inputs.txt. About 2.5 min with an
# empty CACHE, 1-1.5 min with a cached debootstrap (2 cores).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../lib/rootfs.sh"

# shellcheck disable=SC2034  # read by lib/rootfs.sh
PROFILE=compute-node
# qemu-utils: qemu-img, which libvirt storage pools and most VM workflows need.
# shellcheck disable=SC2034
PROFILE_PACKAGES=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients
    open-iscsi bridge-utils)

rootfs_main
