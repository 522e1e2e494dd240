# shellcheck shell=bash
# Helpers shared by every image recipe. Source it; do not run it.
# Callers have already done `set -euo pipefail`.

log()  { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# need_env VAR...: fail early with a clear message instead of an "unbound variable" trace.
need_env() {
    local v
    for v; do [[ -n ${!v:-} ]] || die "$v must be set (see images/README.md)"; done
}

need_cmd() {
    local c
    for c; do command -v "$c" >/dev/null || die "missing command: $c (apt-get install it)"; done
}

# Device nodes, chroots and file ownership all need real root.
need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

# Timestamp for the artifacts' metadata, so that identical inputs give identical bytes.
: "${SOURCE_DATE_EPOCH:=0}"

# kv FILE KEY VALUE: append one key=value line to an inputs.txt.
kv() { printf '%s=%s\n' "$2" "$3" >>"$1"; }

# The node's architecture, in Debian's words: amd64 (the default) or arm64. A
# foreign one needs `dpkg --add-architecture arm64 && apt-get update` on the
# build host (packages are downloaded and unpacked, never installed).
ARCH=${ARCH:-amd64}
case $ARCH in
    amd64 | arm64) ;;
    *) die "ARCH=$ARCH: ramboot builds images for amd64 or arm64" ;;
esac
HOST_ARCH=$(dpkg --print-architecture)

# deb_fetch PKG VERSION: download PKG (for $ARCH) once into $CACHE/debs; prints
# the .deb's path. apt verifies it against the signed index.
deb_fetch() {
    local pkg=$1 version=$2 debdir=$CACHE/debs tmp deb
    deb=$debdir/${pkg}_${version//:/%3a}_${ARCH}.deb
    if [[ ! -s $deb ]]; then
        mkdir -p "$debdir"
        # Into a scratch dir first: an interrupted download must not look cached.
        # Sandbox user root: the cache dir is usually not readable by _apt.
        tmp=$(mktemp -d "$debdir/.dl.XXXXXX")
        (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg:$ARCH=$version" >&2) \
            || die "cannot download $pkg:$ARCH=$version (for arm64: dpkg --add-architecture arm64 && apt-get update)"
        mv -f "$tmp"/*.deb "$deb"
        rmdir "$tmp"
    fi
    printf '%s\n' "$deb"
}

# --- busybox (busybox-static: the host's, or the $ARCH package's) -----------------
BUSYBOX_BIN=/bin/busybox

busybox_version() {
    if [[ $ARCH == "$HOST_ARCH" ]]; then
        dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || die "busybox-static is not installed"
    else
        apt-cache policy "busybox-static:$ARCH" | awk '$1 == "Candidate:" { print $2 }'
    fi
}

# busybox_for_arch: point BUSYBOX_BIN at a static busybox for $ARCH (a foreign
# one is unpacked from its package into $CACHE).
busybox_for_arch() {
    [[ $ARCH == "$HOST_ARCH" ]] && return 0
    need_env CACHE
    local version deb root
    version=$(busybox_version)
    [[ -n $version && $version != "(none)" ]] || die "no busybox-static:$ARCH (dpkg --add-architecture $ARCH && apt-get update)"
    root=$CACHE/busybox/${ARCH}_${version}
    if [[ ! -x $root/bin/busybox ]]; then
        deb=$(deb_fetch busybox-static "$version")
        rm -rf "$root"
        mkdir -p "$root"
        dpkg-deb -x "$deb" "$root"
    fi
    BUSYBOX_BIN=$root/bin/busybox
}

# install_busybox ROOT [links]: copy the static busybox into ROOT/bin, plus /bin/sh.
# With "links", also create every applet symlink now (stage two has no
# `busybox --install` step of its own).
install_busybox() {
    local root=$1 links=${2:-} path
    file -L "$BUSYBOX_BIN" 2>/dev/null | grep -q 'statically linked' \
        || die "$BUSYBOX_BIN is not the static build (install busybox-static)"
    install -D -m 0755 "$BUSYBOX_BIN" "$root/bin/busybox"
    ln -sfn busybox "$root/bin/sh"
    [[ $links == links ]] || return 0
    # The applet list comes from the host's busybox: a foreign one cannot run here
    # (the same Debian release builds both with the same applets).
    for path in $(/bin/busybox --list-full); do
        [[ -e $root/$path || -L $root/$path ]] && continue
        mkdir -p "$root/$(dirname "$path")"
        ln -s /bin/busybox "$root/$path"
    done
}

# --- artifacts -------------------------------------------------------------------

# normalize_mtimes DIR: fixed mtimes so that rebuilding gives the same bytes.
normalize_mtimes() {
    find "$1" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# make_sqfs DIR FILE: zstd squashfs, written atomically (a half-written image is never served).
# Ownership is kept as-is: debootstrap roots have non-root-owned files.
make_sqfs() {
    local src=$1 dest=$2
    rm -f "$dest.tmp"
    # mksquashfs refuses SOURCE_DATE_EPOCH together with options; pass the
    # image time explicitly and keep the files' own mtimes.
    env -u SOURCE_DATE_EPOCH mksquashfs "$src" "$dest.tmp" -comp zstd -noappend -no-progress -quiet \
        -mkfs-time "$SOURCE_DATE_EPOCH" >/dev/null
    mv -f "$dest.tmp" "$dest"
}

# human_size FILE
human_size() { du -h --apparent-size "$1" | cut -f1; }
