#!/usr/bin/env bash
# Provision the Vagrant server VM: build ramboot, build the images, run it as a
# systemd service on the boot network.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends build-essential curl ca-certificates \
    ipxe busybox-static cpio kmod zstd squashfs-tools debootstrap
if ! command -v cargo >/dev/null; then
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
. "$HOME/.cargo/env"
cd /srv/ramboot
cargo build --release
# The static stage-one agent, beside ramboot: `ramboot image build stage1` takes it from there.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p ramboot-agent \
    --target x86_64-unknown-linux-gnu --target-dir target/agent
install -m 0755 target/release/ramboot /usr/local/bin/ramboot
install -m 0755 target/agent/x86_64-unknown-linux-gnu/release/ramboot-agent /usr/local/bin/ramboot-agent
mkdir -p /etc/ramboot /var/lib/ramboot
cp -r profiles /etc/ramboot/
ipxe/fetch.sh /var/lib/ramboot/ipxe
ramboot image build stage1 --data /var/lib/ramboot --recipes images --cache /var/cache/ramboot
ramboot image build tiny --data /var/lib/ramboot --recipes images --cache /var/cache/ramboot
iface=$(ip -o -4 addr show | awk -v ip="$SERVER_IP" '$4 ~ "^"ip"/" {print $2}')
cat >/etc/ramboot/ramboot.yaml <<YAML
interface: ${iface}
server_address: ${SERVER_IP}
dhcp:
  subnet: ${SERVER_IP%.*}.0/24
  range: [${SERVER_IP%.*}.100, ${SERVER_IP%.*}.199]
paths:
  profiles: /etc/ramboot/profiles
  ipxe: /var/lib/ramboot/ipxe
  data: /var/lib/ramboot
default_profile: tiny
ipv6_ra: true
YAML
cat >/etc/systemd/system/ramboot.service <<UNIT
[Unit]
Description=ramboot netboot provisioner
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/ramboot serve --config /etc/ramboot/ramboot.yaml
Restart=on-failure
# SIGTERM drains in-flight requests.
KillSignal=SIGTERM
TimeoutStopSec=20

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now ramboot
echo "ramboot is serving on ${iface} (${SERVER_IP}); now: vagrant up node1"
