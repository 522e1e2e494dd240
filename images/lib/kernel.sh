# shellcheck shell=bash
# The stage-one kernel, fetched as a Debian package into $CACHE. Shared by
# stage1 (vmlinuz + a few modules) and the profile images (the full module
# tree, which stage two needs because it runs on stage one's kernel).
# Never touches the host's /boot or /lib/modules.
#
# Sets: KPKG (linux-image-6.1.0-N-amd64), KPKG_VERSION (6.1.x-y),
#       KVER (6.1.0-N-amd64, = `uname -r` on the node), KROOT (unpacked package).
# Optional: KERNEL_PACKAGE=linux-image-6.1.0-N-amd64 pins the package.

kernel_resolve() {
    if [[ -n ${KERNEL_PACKAGE:-} ]]; then
        KPKG=$KERNEL_PACKAGE
    else
        # The metapackage depends on exactly one versioned image package.
        KPKG=$(apt-cache depends linux-image-amd64 \
            | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    fi
    [[ -n $KPKG ]] || die "cannot resolve the kernel package from linux-image-amd64 (apt-get update?)"
    KPKG_VERSION=$(apt-cache policy "$KPKG" | awk '$1 == "Candidate:" { print $2 }')
    [[ -n $KPKG_VERSION && $KPKG_VERSION != "(none)" ]] || die "no candidate version for $KPKG"
    KVER=${KPKG#linux-image-}
}

# kernel_fetch: download (once) and unpack (once) the kernel package under $CACHE.
kernel_fetch() {
    need_env CACHE
    kernel_resolve
    local debdir=$CACHE/debs tmp deb
    KROOT=$CACHE/kernel/${KPKG}_${KPKG_VERSION}
    mkdir -p "$debdir"
    deb=$debdir/${KPKG}_${KPKG_VERSION}_amd64.deb
    if [[ -s $deb ]]; then
        log "kernel $KPKG $KPKG_VERSION: using cached $deb"
    else
        log "downloading kernel $KPKG $KPKG_VERSION (~70 MB)"
        # Into a scratch dir first: an interrupted download must not look cached.
        tmp=$(mktemp -d "$debdir/.dl.XXXXXX")
        # apt verifies the .deb against the signed index. Sandbox user root:
        # the cache dir is usually not readable by _apt.
        (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KPKG_VERSION")
        mv -f "$tmp"/*.deb "$deb"
        rmdir "$tmp"
    fi
    if [[ -e $KROOT/.unpacked ]]; then
        log "kernel: using cached unpacked tree $KROOT"
    else
        log "unpacking kernel into $KROOT"
        rm -rf "$KROOT"
        mkdir -p "$KROOT"
        dpkg-deb -x "$deb" "$KROOT"
        log "running depmod for $KVER"
        depmod -b "$KROOT" "$KVER"
        touch "$KROOT/.unpacked"
    fi
    [[ -f $KROOT/boot/vmlinuz-$KVER ]] || die "no vmlinuz-$KVER in $deb"
    [[ -d $KROOT/lib/modules/$KVER ]] || die "no /lib/modules/$KVER in $deb"
}
