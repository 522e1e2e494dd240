# shellcheck shell=bash
# Shared recipe for the Debian (systemd) stage-two images. A profile script
# sets PROFILE and PROFILE_PACKAGES, optionally defines profile_customize ROOT
# and profile_inputs FILE, then calls rootfs_main. See images/README.md.
#
#   debootstrap (cached as a tarball keyed by the package list)
#   -> trim -> systemd tweaks -> kernel modules -> mksquashfs $OUT/rootfs.sqfs
#
# Inputs: OUT, CACHE. Optional: MIRROR (else the host's apt mirror for $SUITE),
# REFRESH=1 (ignore the cached debootstrap tarball), KERNEL_PACKAGE (lib/kernel.sh).

ROOTFS_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$ROOTFS_LIB/common.sh"
source "$ROOTFS_LIB/kernel.sh"

SUITE=bookworm
VARIANT=minbase
# Every image gets these: an init, device management, networking tools,
# module loading, dbus + logind (hostnamectl, polkit, libvirt), CA roots.
# debootstrap does not resolve virtual packages: libpam-systemd is named here
# because it is what provides "logind | default-logind" (polkitd needs it).
BASE_PACKAGES=(systemd-sysv udev iproute2 kmod dbus libpam-systemd procps iputils-ping ca-certificates)
# Bump when the debootstrap step below changes, to invalidate cached tarballs.
ROOTFS_CACHE_VERSION=1
# Module directories no server node needs: 160 of the 400 MB. (Keep
# drivers/hid: BMC virtual consoles are USB keyboards.)
MODULES_EXCLUDE=(sound drivers/media drivers/gpu drivers/staging drivers/iio
    drivers/net/wireless drivers/bluetooth net/bluetooth net/mac80211 net/wireless
    drivers/net/can net/can drivers/isdn drivers/nfc net/nfc
    drivers/input/joystick drivers/input/touchscreen)

# rootfs_mirror: the Debian mirror the host's apt uses for $SUITE, from either
# one-line (*.list) or deb822 (*.sources) files. Disabled files are ignored.
rootfs_mirror() {
    if [[ -n ${MIRROR:-} ]]; then echo "$MIRROR"; return; fi
    local f m=""
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        m=$(awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }   # skip [options]
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f")
        [[ -n $m ]] && break
    done
    if [[ -z $m ]]; then
        for f in /etc/apt/sources.list.d/*.sources; do
            [[ -r $f ]] || continue
            m=$(awk -v suite="$SUITE" '
                BEGIN { RS = ""; FS = "\n" }       # one stanza per record
                {
                    types = uris = suites = enabled = ""
                    for (i = 1; i <= NF; i++) {
                        if ($i ~ /^#/) continue
                        split($i, kv, ":[ \t]*"); key = tolower(kv[1])
                        val = substr($i, index($i, ":") + 1); gsub(/^[ \t]+/, "", val)
                        if (key == "types") types = val
                        else if (key == "uris") uris = val
                        else if (key == "suites") suites = val
                        else if (key == "enabled") enabled = val
                    }
                    if (enabled == "no" || (" " types " ") !~ / deb /) next
                    if ((" " suites " ") ~ (" " suite " ")) { split(uris, u, " "); print u[1]; exit }
                }' "$f")
            [[ -n $m ]] && break
        done
    fi
    [[ -n $m ]] || die "no apt source for $SUITE in /etc/apt; set MIRROR=http://.../debian"
    echo "${m%/}"
}

# rootfs_cleanup DIR: unmount whatever a failed debootstrap left mounted
# inside DIR (proc, sys), then delete it without crossing into other mounts.
rootfs_cleanup() {
    local dir=$1 mnt
    [[ -d $dir ]] || return 0
    for mnt in $(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$mnt" || true
    done
    rm -rf --one-file-system "$dir"
}

# rootfs_debootstrap ROOT: fill ROOT from the cached tarball, or debootstrap
# and cache. The key is the package list, so the two profiles never collide,
# and a rebuild after changing only the customization below takes seconds.
rootfs_debootstrap() {
    local root=$1 key tarball pkgs
    pkgs=$(printf '%s\n' "${BASE_PACKAGES[@]}" "${PROFILE_PACKAGES[@]}" | LC_ALL=C sort -u | paste -sd, -)
    key=$(printf '%s\n' "$ROOTFS_CACHE_VERSION" "$SUITE" "$VARIANT" "$pkgs" | sha256sum | cut -c1-16)
    tarball=$CACHE/rootfs/debootstrap-$SUITE-$key.tar.zst
    mkdir -p "$CACHE/rootfs" "$CACHE/debootstrap-debs"
    if [[ -s $tarball && -z ${REFRESH:-} ]]; then
        log "debootstrap: using cached $tarball"
    else
        log "debootstrap $VARIANT $SUITE from $MIRROR_URL (several minutes)"
        log "  packages: $pkgs"
        # --cache-dir keeps the .debs, so other package lists download only what is new.
        debootstrap --variant="$VARIANT" --include="$pkgs" \
            --cache-dir="$CACHE/debootstrap-debs" "$SUITE" "$root" "$MIRROR_URL" || {
            # The work dir is deleted on exit; keep the log that says why.
            cp -f "$root/debootstrap/debootstrap.log" "$OUT/debootstrap.log" 2>/dev/null || true
            die "debootstrap failed; see $OUT/debootstrap.log"
        }
        rm -f "$root"/var/cache/apt/archives/*.deb
        log "caching the debootstrap result as $tarball"
        tar --numeric-owner --xattrs --acls -C "$root" -cf - . | zstd -q -T0 -3 >"$tarball.tmp"
        mv -f "$tarball.tmp" "$tarball"
        printf '%s\n' "$pkgs" >"${tarball%.tar.zst}.packages"
        return 0
    fi
    log "unpacking the cached root"
    zstd -q -dc "$tarball" | tar --numeric-owner --xattrs --acls -xpf - -C "$root"
}

# rootfs_trim ROOT: drop what a RAM-resident node never reads.
rootfs_trim() {
    local root=$1
    log "trimming docs, man pages, locales, apt lists"
    # Keep the copyright files: the image is redistributed to the nodes.
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$root"/usr/share/{man,info,lintian,linda}/* "$root"/usr/share/locale/*
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
    find "$root/var/log" -type f -delete
    # /run and /tmp are tmpfs on the node; whatever package scripts left there is hidden anyway.
    rm -rf "${root:?}"/run/* "${root:?}"/tmp/*
    # Packages installed later on the node stay trimmed as well.
    mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
    cat >"$root/etc/dpkg/dpkg.cfg.d/ramboot-trim" <<'CFG'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
CFG
}

# rootfs_systemd ROOT: the settings every ramboot systemd node needs.
rootfs_systemd() {
    local root=$1 sd=$1/etc/systemd/system
    log "configuring systemd (machine-id, firstboot, ttyS0 getty, ramboot-ready, ramboot-commands)"
    # Empty machine-id: each node generates its own at boot; sharing one breaks
    # DHCP client IDs and journald.
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    # firstboot would otherwise prompt on the console for locale/timezone.
    ln -sfn /dev/null "$sd/systemd-firstboot.service"
    mkdir -p "$sd/getty.target.wants" "$sd/multi-user.target.wants"
    ln -sfn /lib/systemd/system/serial-getty@.service "$sd/getty.target.wants/serial-getty@ttyS0.service"
    cat >"$sd/ramboot-ready.service" <<'UNIT'
[Unit]
Description=Report to ramboot that this node is up
Documentation=file:///etc/ramboot/
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
# Written by stage one before switch_root, like /usr/sbin/ramboot-agent.
EnvironmentFile=-/etc/ramboot/agent.env
ExecStart=/usr/sbin/ramboot-agent ready
# Same console marker as the tiny image, for CI.
ExecStartPost=/bin/sh -c 'echo RAMBOOT-STAGE2-READY >/dev/console'
StandardOutput=journal+console
TimeoutStartSec=120

[Install]
WantedBy=multi-user.target
UNIT
    ln -sfn ../ramboot-ready.service "$sd/multi-user.target.wants/ramboot-ready.service"
    # What the server asks of the node (a reboot, for a rollout of a node without
    # a BMC): the agent long-polls for it for as long as the node is up.
    cat >"$sd/ramboot-commands.service" <<'UNIT'
[Unit]
Description=Carry out what ramboot asks of this node (a reboot)
Documentation=file:///etc/ramboot/
Wants=ramboot-ready.service
After=ramboot-ready.service

[Service]
EnvironmentFile=-/etc/ramboot/agent.env
ExecStart=/usr/sbin/ramboot-agent commands
# The agent backs off on its own; this covers a crash or a failed reboot.
Restart=always
RestartSec=10
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
UNIT
    ln -sfn ../ramboot-commands.service "$sd/multi-user.target.wants/ramboot-commands.service"
    if [ -x "$root/usr/sbin/iscsiadm" ] || [ -x "$root/sbin/iscsiadm" ]; then
        # VM disks: log in to the volumes ramboot's plan names (stage one left the
        # plan in /etc/ramboot/iscsi.json), before the node reports ready.
        cat >"$sd/ramboot-iscsi.service" <<'UNIT'
[Unit]
Description=Log in to this node's iSCSI volumes (from ramboot's plan)
ConditionPathExists=/etc/ramboot/iscsi.json
Wants=network-online.target iscsid.service
After=network-online.target iscsid.service
Before=ramboot-ready.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ramboot-agent iscsi-login
StandardOutput=journal+console
TimeoutStartSec=180

[Install]
WantedBy=multi-user.target
UNIT
        ln -sfn ../ramboot-iscsi.service "$sd/multi-user.target.wants/ramboot-iscsi.service"
    fi
    mkdir -p "$root/etc/ramboot"
    # Placeholders: the agent writes the node's real name; the network was
    # configured by stage one and survives switch_root (the kernel keeps it).
    echo ramboot-node >"$root/etc/hostname"
    chmod 0644 "$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
    # debootstrap copied the build host's resolver; it means nothing on a node.
    rm -f "$root/etc/resolv.conf"
    : >"$root/etc/resolv.conf"
    # The root is an overlay set up by stage one; nothing to mount from fstab.
    echo '# root is a tmpfs overlay over a squashfs, set up by ramboot stage one' >"$root/etc/fstab"
}

# rootfs_modules ROOT: stage two runs on stage one's kernel, so it needs that
# kernel's modules (kvm, bridge, iscsi_tcp, br_netfilter, ...), from the same
# cached package as images/stage1/build.sh.
rootfs_modules() {
    local root=$1 x excl=()
    kernel_fetch
    log "installing kernel modules for $KVER"
    for x in "${MODULES_EXCLUDE[@]}"; do excl+=(--exclude="./kernel/$x"); done
    mkdir -p "$root/lib/modules/$KVER"
    tar -C "$KROOT/lib/modules/$KVER" "${excl[@]}" -cf - . | tar -C "$root/lib/modules/$KVER" -xf -
    depmod -b "$root" "$KVER"
    log "modules: $(du -sh "$root/lib/modules/$KVER" | cut -f1)"
}

# rootfs_main: the whole recipe. Needs PROFILE and PROFILE_PACKAGES.
rootfs_main() {
    need_env OUT CACHE PROFILE
    need_root
    need_cmd debootstrap mksquashfs zstd tar depmod apt-cache apt-get dpkg-deb
    local root inputs
    SECONDS=0
    mkdir -p "$OUT" "$CACHE"
    OUT=$(cd "$OUT" && pwd)
    CACHE=$(cd "$CACHE" && pwd)
    MIRROR_URL=$(rootfs_mirror)

    # Not /tmp: some hosts mount it noexec/nodev, which breaks the chroot.
    root=$(mktemp -d "${TMPDIR:-/var/tmp}/ramboot-$PROFILE.XXXXXX")
    chmod 0755 "$root"   # it becomes the node's /
    # shellcheck disable=SC2064  # expand $root now
    trap "rootfs_cleanup '$root'" EXIT

    rootfs_debootstrap "$root"
    rootfs_trim "$root"
    rootfs_systemd "$root"
    rootfs_modules "$root"
    if declare -F profile_customize >/dev/null; then
        log "applying $PROFILE customizations"
        profile_customize "$root"
    fi

    log "writing inputs.txt"
    inputs=$OUT/inputs.txt
    : >"$inputs"
    kv "$inputs" profile "$PROFILE"
    kv "$inputs" suite "$SUITE"
    kv "$inputs" variant "$VARIANT"
    kv "$inputs" mirror "$MIRROR_URL"
    kv "$inputs" packages_requested "$(printf '%s ' "${BASE_PACKAGES[@]}" "${PROFILE_PACKAGES[@]}" | sed 's/ $//')"
    kv "$inputs" kernel_package "$KPKG"
    kv "$inputs" kernel_version "$KPKG_VERSION"
    kv "$inputs" kernel_release "$KVER"
    kv "$inputs" modules_excluded "${MODULES_EXCLUDE[*]}"
    if declare -F profile_inputs >/dev/null; then profile_inputs "$inputs"; fi
    # Exact versions of everything installed: the image's real bill of materials.
    dpkg-query --admindir="$root/var/lib/dpkg" -W -f='deb.${Package}=${Version}\n' | LC_ALL=C sort >>"$inputs"
    log "root tree: $(du -sh --one-file-system "$root" | cut -f1)"

    log "writing rootfs.sqfs (zstd; takes a while on 2 cores)"
    make_sqfs "$root" "$OUT/rootfs.sqfs"
    log "done in ${SECONDS}s: $OUT/rootfs.sqfs ($(human_size "$OUT/rootfs.sqfs"))"
}
