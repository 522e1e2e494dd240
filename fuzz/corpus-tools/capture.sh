#!/usr/bin/env bash
# Capture real DHCP client traffic inside private network namespaces (named after this
# shell's PID, deleted on exit; no traffic leaves them). Needs root and Debian's
# tcpdump dnsmasq-base isc-dhcp-client isc-dhcp-relay udhcpc busybox kea-dhcp4-server
# (perfdhcp) qemu-system-x86 ipxe-qemu ovmf. Set NO_QEMU=1 to skip the two VMs.
# Usage: capture.sh OUTDIR   → OUTDIR/{s0,s1,s2,tap0}.pcap plus the tools' logs.
#   s1: direct clients (dhclient, udhcpc)   s0: the same clients behind dhcrelay -a (giaddr + option 82)
#   s2: perfdhcp (relay mode: giaddr, option 82 via -o)   tap0: QEMU iPXE ROM (BIOS) and OVMF (UEFI PXE, HTTP boot, iPXE)
set -u
W=${1:?usage: capture.sh OUTDIR}; mkdir -p "$W"; W=$(cd "$W" && pwd)
[ -z "$(ls -A "$W")" ] || { echo "capture.sh: $W is not empty" >&2; exit 1; }
ID=$$
S=rbf${ID}s; C=rbf${ID}c; R=rbf${ID}r; X=rbf${ID}x; P=rbf${ID}p
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  for ns in $S $C $R $X $P; do
    for p in $(ip netns pids $ns 2>/dev/null); do kill "$p" 2>/dev/null; done
  done
  sleep 1
  for ns in $S $C $R $X $P; do ip netns del $ns 2>/dev/null; done
}
trap cleanup EXIT
ex() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
for ns in $S $C $R $X $P; do ip netns add $ns; ip -n $ns link set lo up; done
# direct clients: C.c0 <-> S.s1
ip link add c0 netns $C type veth peer name s1 netns $S
# relayed clients: X.x0 <-> R.r0 ; R.r1 <-> S.s0
ip link add x0 netns $X type veth peer name r0 netns $R
ip link add r1 netns $R type veth peer name s0 netns $S
# perfdhcp: P.p0 <-> S.s2
ip link add p0 netns $P type veth peer name s2 netns $S
ip -n $S tuntap add dev tap0 mode tap
ip -n $S addr add 10.213.1.1/24 dev s1
ip -n $S addr add 10.213.1.99/24 dev s1     # conflicts with a fixed lease: makes udhcpc -a DECLINE
ip -n $S addr add 10.214.0.2/30 dev s0
ip -n $S addr add 10.213.3.1/24 dev s2
ip -n $S addr add 10.213.2.1/24 dev tap0
ip -n $S addr add fd00:213:2::1/64 dev tap0 nodad
ip -n $R addr add 10.213.0.1/24 dev r0
ip -n $R addr add 10.214.0.1/30 dev r1
ip -n $P addr add 10.213.3.50/24 dev p0
for l in "$S s1" "$S s0" "$S s2" "$S tap0" "$C c0" "$R r0" "$R r1" "$X x0" "$P p0"; do set -- $l; ip -n $1 link set $2 up; done
ip -n $S route add 10.213.0.0/24 via 10.214.0.1
ex $R sysctl -qw net.ipv4.ip_forward=1
sleep 2
for i in s0 s1 s2 tap0; do
  ex $S tcpdump -i $i -s 0 -U -w $W/$i.pcap 'udp and (port 67 or port 68)' 2>$W/tcpdump-$i.log & PIDS+=($!)
done
ex $S dnsmasq --conf-file=/dev/null --keep-in-foreground --port=0 --no-ping --log-dhcp --log-facility=$W/dnsmasq.log \
  --dhcp-leasefile=$W/dnsmasq.leases --pid-file=$W/dnsmasq.pid --interface=s0 --interface=s1 --interface=s2 --interface=tap0 \
  --dhcp-range=10.213.1.100,10.213.1.150,255.255.255.0,1h --dhcp-range=10.213.0.100,10.213.0.150,255.255.255.0,1h \
  --dhcp-range=10.213.3.100,10.213.3.200,255.255.255.0,1h --dhcp-range=10.213.2.100,10.213.2.150,255.255.255.0,1h \
  --enable-ra --dhcp-range=fd00:213:2::,ra-only \
  --dhcp-host=02:00:00:00:0d:ec,10.213.1.99 \
  --dhcp-match=set:ipxe,175 --dhcp-boot=tag:!ipxe,undionly.kpxe --dhcp-boot=tag:ipxe,http://10.213.2.1/boot.ipxe &
PIDS+=($!)
ex $R dhcrelay -4 -d -a -pf $W/dhcrelay.pid -id r0 -iu r1 10.214.0.2 >$W/dhcrelay.log 2>&1 & PIDS+=($!)
sleep 3

mac() { ip -n $1 link set $2 address $3; }
cat > $W/udhcpc.script <<'S'
#!/bin/sh
case "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface"; [ -n "$router" ] && ip route replace default via "${router%% *}";; deconfig) ip addr flush dev "$interface";; esac
exit 0
S
chmod +x $W/udhcpc.script
# a dhclient-script that only sets the address (never touches /etc/resolv.conf)
cat > $W/dhclient.script <<'S'
#!/bin/sh
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT) ip addr flush dev "$interface"; ip addr add "$new_ip_address/${new_subnet_mask:-255.255.255.0}" dev "$interface"
    [ -n "$new_routers" ] && ip route replace default via "${new_routers%% *}";;
  RELEASE|EXPIRE|STOP|FAIL) ip addr flush dev "$interface";;
esac
exit 0
S
chmod +x $W/dhclient.script
UD="busybox udhcpc -f -n -t 3 -T 1 -A 1"
for NS_IF in "$C c0 01" "$X x0 02"; do
  set -- $NS_IF; ns=$1; ifc=$2; n=$3
  # dhclient: plain DORA, INIT-REBOOT with the saved lease, then RELEASE
  mac $ns $ifc 02:00:00:$n:01:01
  DH="dhclient -4 -v -sf $W/dhclient.script -lf $W/dh$n.leases -pf $W/dh$n.pid"
  timeout 20 ip netns exec $ns $DH -1 $ifc >>$W/dhclient.log 2>&1
  sleep 0.5; timeout 5 ip netns exec $ns $DH -x $ifc >>$W/dhclient.log 2>&1
  timeout 20 ip netns exec $ns $DH -1 $ifc >>$W/dhclient.log 2>&1   # INIT-REBOOT
  timeout 10 ip netns exec $ns $DH -r $ifc >>$W/dhclient.log 2>&1   # RELEASE
  # dhclient with a PXE/HTTP-boot-like config
  mac $ns $ifc 02:00:00:$n:01:02
  cat > $W/dh$n.conf <<CONF
option pxe-arch code 93 = unsigned integer 16;
option pxe-ndi code 94 = string;
option pxe-uuid code 97 = string;
option user-class code 77 = string;
send vendor-class-identifier "HTTPClient:Arch:00016:UNDI:003001";
send pxe-arch 16;
send pxe-ndi 01:03:00;
send pxe-uuid 00:8e:4e:6f:a3:36:2b:4c:9c:a2:1f:7e:3d:55:10:aa:01;
send host-name "node-$n";
send dhcp-client-identifier 01:02:00:00:$n:01:02;
send fqdn.fqdn "node-$n.lab.example.";
request subnet-mask, broadcast-address, time-offset, routers, domain-name, domain-name-servers, host-name, ntp-servers, vendor-encapsulated-options, tftp-server-name, bootfile-name;
CONF
  timeout 20 ip netns exec $ns $DH -cf $W/dh$n.conf -lf $W/dh$n-b.leases -1 $ifc >>$W/dhclient.log 2>&1
  timeout 10 ip netns exec $ns $DH -cf $W/dh$n.conf -lf $W/dh$n-b.leases -r $ifc >>$W/dhclient.log 2>&1
  # udhcpc: plain, release on exit; renew (unicast with ciaddr) via USR1
  mac $ns $ifc 02:00:00:$n:02:01
  timeout 15 ip netns exec $ns $UD -q -R -i $ifc -s $W/udhcpc.script >>$W/udhcpc.log 2>&1
  mac $ns $ifc 02:00:00:$n:02:02
  ip netns exec $ns $UD -i $ifc -s $W/udhcpc.script -x hostname:bbox-$n -F bbox-$n.lab >>$W/udhcpc.log 2>&1 & up=$!; PIDS+=($up)
  sleep 3; kill -USR1 $up; sleep 2; kill -USR2 $up; sleep 1; kill $up; wait $up 2>/dev/null
  ip -n $ns addr flush dev $ifc
  # udhcpc firmware-like variants: arch 7/9/11/16/19 (+0) with PXEClient/HTTPClient classes
  k=0
  for v in "0000 PXEClient:Arch:00000:UNDI:002001" "0007 PXEClient:Arch:00007:UNDI:003016" "0009 PXEClient:Arch:00009:UNDI:003016" \
           "000b PXEClient:Arch:00011:UNDI:003000" "0010 HTTPClient:Arch:00016:UNDI:003001" "0007 HTTPClient:Arch:00007:UNDI:003001" \
           "0013 HTTPClient:Arch:00019:UNDI:003000"; do
    set -- $v; k=$((k+1))
    mac $ns $ifc 02:00:00:$n:03:0$k
    timeout 10 ip netns exec $ns $UD -q -o -O 1 -O 3 -O 6 -O 43 -O 60 -O 66 -O 67 -O 128 -O 129 -i $ifc -s /bin/true -C -V $2 \
      -x 0x5d:$1 -x 0x5e:010201 -x 0x61:00$(printf '%02x' $k)112233445566778899aabbccddeeff -x 0x4d:$( [ $k -gt 4 ] && printf iPXE | xxd -p || echo 00) \
      >>$W/udhcpc.log 2>&1
  done
done
# DECLINE: the fixed lease 10.213.1.99 answers ARP (server owns it), udhcpc -a declines it
mac $C c0 02:00:00:00:0d:ec
timeout 12 ip netns exec $C busybox udhcpc -f -n -q -B -t 2 -T 1 -A 1 -a500 -i c0 -s /bin/true >>$W/udhcpc.log 2>&1
# perfdhcp: broadcast on an interface, then as a relay (giaddr + option 82), with releases
timeout 30 ip netns exec $P perfdhcp -4 -l p0 -R 10 -n 10 >$W/perfdhcp.log 2>&1
timeout 30 ip netns exec $P perfdhcp -4 -l 10.213.3.50 -R 10 -n 10 -b mac=00:0c:01:02:03:aa \
  -o 82,01066574682d3031020612345678abcd 10.213.3.1 >>$W/perfdhcp.log 2>&1
timeout 30 ip netns exec $P perfdhcp -4 -l 10.213.3.50 -R 10 -r 10 -F 5 -p 2 -b mac=00:0c:01:02:03:bb 10.213.3.1 >>$W/perfdhcp.log 2>&1
# iPXE in QEMU: BIOS (pxe-e1000 ROM), then UEFI (OVMF + efi-e1000 ROM)
if [ "${NO_QEMU:-0}" != 1 ]; then
  ip netns exec $S qemu-system-x86_64 -accel tcg -m 256M -nographic -serial stdio -monitor none -no-reboot -boot n \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device e1000,netdev=n0,mac=52:54:00:00:b1:05,romfile=/usr/lib/ipxe/qemu/pxe-e1000.rom,bootindex=1 </dev/null >$W/qemu-bios.log 2>&1 &
  q=$!; PIDS+=($q); sleep 20; kill $q; wait $q 2>/dev/null
  cp /usr/share/OVMF/OVMF_VARS_4M.fd $W/vars.fd
  ip netns exec $S qemu-system-x86_64 -accel tcg -machine q35 -m 256M -nographic -serial stdio -monitor none -no-reboot -boot n \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd -drive if=pflash,format=raw,file=$W/vars.fd \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device e1000,netdev=n0,mac=52:54:00:00:ef:07,romfile=/usr/lib/ipxe/qemu/efi-e1000.rom,bootindex=1 </dev/null >$W/qemu-uefi.log 2>&1 &
  q=$!; PIDS+=($q); sleep 58; kill $q; wait $q 2>/dev/null
fi
sleep 1
echo capture done
