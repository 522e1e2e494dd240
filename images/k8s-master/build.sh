#!/usr/bin/env bash
# Build the k8s-master profile: Debian bookworm + systemd + containerd + etcd.
#
#   OUT=dir CACHE=dir images/k8s-master/build.sh
#
# Debian bookworm does not package the Kubernetes control plane: there is no
# kubelet, kubeadm, kube-apiserver, kube-controller-manager or kube-scheduler
# (checked with apt-cache; only kubernetes-client, i.e. kubectl 1.20, exists).
# So this image carries the runtime and the datastore, and the control-plane
# binaries have to come from elsewhere (upstream release or a later Debian).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../lib/rootfs.sh"

# shellcheck disable=SC2034  # read by lib/rootfs.sh
PROFILE=k8s-master
# shellcheck disable=SC2034
PROFILE_PACKAGES=(containerd etcd-server etcd-client kubernetes-client)

# The usual kubeadm prerequisites, so the node is ready once the binaries arrive.
profile_customize() {
    local root=$1
    mkdir -p "$root/etc/modules-load.d" "$root/etc/sysctl.d"
    printf '%s\n' overlay br_netfilter >"$root/etc/modules-load.d/k8s.conf"
    cat >"$root/etc/sysctl.d/90-k8s.conf" <<'CONF'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
CONF
}

profile_inputs() {
    kv "$1" kubernetes_control_plane "not packaged in Debian bookworm (no kubelet/kubeadm/kube-apiserver); image has containerd, etcd, kubectl 1.20 only"
}

rootfs_main
