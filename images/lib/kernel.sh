# shellcheck shell=bash
# The stage-one kernel, fetched as a Debian package into $CACHE. Shared by
# stage1 (vmlinuz + a few modules) and the profile images (the full module
# tree, which stage two needs because it runs on stage one's kernel).
# Never touches the host's /boot or /lib/modules.
#
# Sets: KPKG (linux-image-6.1.0-N-$ARCH), KPKG_VERSION (6.1.x-y),
#       KVER (6.1.0-N-$ARCH, = `uname -r` on the node), KROOT (unpacked package).
# Optional: KERNEL_PACKAGE=linux-image-6.1.0-N-$ARCH pins the package.

kernel_resolve() {
    if [[ -n ${KERNEL_PACKAGE:-} ]]; then
        KPKG=$KERNEL_PACKAGE
    else
        # The metapackage depends on exactly one versioned image package.
        KPKG=$(apt-cache depends "linux-image-$ARCH:$ARCH" \
            | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { sub(/:.*/, "", $2); print $2; exit }')
    fi
    [[ -n $KPKG ]] || die "cannot resolve the kernel package from linux-image-$ARCH (apt-get update?)"
    KPKG_VERSION=$(apt-cache policy "$KPKG:$ARCH" | awk '$1 == "Candidate:" { print $2 }')
    [[ -n $KPKG_VERSION && $KPKG_VERSION != "(none)" ]] || die "no candidate version for $KPKG"
    KVER=${KPKG#linux-image-}
}

# kernel_fetch: download (once) and unpack (once) the kernel package under $CACHE.
kernel_fetch() {
    need_env CACHE
    kernel_resolve
    local deb
    KROOT=$CACHE/kernel/${KPKG}_${KPKG_VERSION}
    if [[ -s $CACHE/debs/${KPKG}_${KPKG_VERSION}_${ARCH}.deb ]]; then
        log "kernel $KPKG $KPKG_VERSION: using the cached package"
    else
        log "downloading kernel $KPKG $KPKG_VERSION (~70 MB)"
    fi
    deb=$(deb_fetch "$KPKG" "$KPKG_VERSION")
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
