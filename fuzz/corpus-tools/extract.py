#!/usr/bin/env python3
"""Extract DHCPv4 UDP payloads from capture.sh's pcaps into one file per packet.

Usage: extract.py OUTDIR CAP/s0.pcap CAP/s1.pcap CAP/s2.pcap CAP/tap0.pcap
Deduplicates by content, names each file <link>-<req|reply>-<type>-<tool>-<traits>-<sha1[:8]>,
keeps one packet per name and only a few server replies (PER_LABEL=N to keep more)."""
import hashlib, os, struct, sys, collections

MT = {1: "discover", 2: "offer", 3: "request", 4: "decline", 5: "ack", 6: "nak", 7: "release", 8: "inform"}

def packets(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    e = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    lt = struct.unpack(e + "I", data[20:24])[0]
    assert lt == 1, lt
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(e + "IIII", data[off:off + 16])
        frame = data[off + 16: off + 16 + incl]
        off += 16 + incl
        et = struct.unpack(">H", frame[12:14])[0]
        p = 14
        if et == 0x8100:
            et = struct.unpack(">H", frame[16:18])[0]; p = 18
        if et != 0x0800:
            continue
        ihl = (frame[p] & 0xF) * 4
        if frame[p + 9] != 17:
            continue
        u = p + ihl
        sport, dport, ulen = struct.unpack(">HHH", frame[u:u + 6])
        yield frame[u + 8: u + ulen]

def opts(b):
    o = {}
    i = 240
    if len(b) < 240 or b[236:240] != b"\x63\x82\x53\x63":
        return o
    while i < len(b):
        c = b[i]
        if c == 0: i += 1; continue
        if c == 255: break
        if i + 1 >= len(b): break
        l = b[i + 1]; o.setdefault(c, b[i + 2:i + 2 + l]); i += 2 + l
    return o

def label(b, iface):
    o = opts(b)
    parts = [iface]
    parts.append("reply" if b[0] == 2 else "req")
    parts.append(MT.get(o.get(53, b"\0")[0], "bootp"))
    if b[0] == 1 and o.get(53) == b"\x03":
        parts.append("select" if 54 in o else ("renew" if b[12:16] != b"\0\0\0\0" else "initreboot"))
    mac = b[28:34]
    src = {0x00: None}
    if mac[:3] == b"\x02\x00\x00":
        tool = {1: "dhclient", 2: "udhcpc", 3: "udhcpc-fw", 0x0d: "udhcpc-decline"}.get(mac[4], "x")
        parts.append(tool)
    elif mac[:3] == b"\x00\x0c\x01":
        parts.append("perfdhcp")
    elif mac[:3] == b"\x52\x54\x00":
        parts.append("ipxe" if 175 in o else "ovmf")
    if 93 in o:
        parts.append("arch%d" % int.from_bytes(o[93], "big"))
    if 60 in o:
        parts.append("".join(ch for ch in o[60].split(b":")[0].decode(errors="replace").lower() if ch.isalnum())[:10])
    if b[24:28] != b"\0\0\0\0":
        parts.append("giaddr")
    if 82 in o:
        parts.append("opt82")
    if b[12:16] != b"\0\0\0\0":
        parts.append("ciaddr")
    return "-".join(parts)

KEEP_REPLIES = {"direct-reply-offer-dhclient", "direct-reply-ack-dhclient", "relayed-reply-ack-udhcpc-giaddr-opt82",
    "perfdhcp-reply-offer-perfdhcp-giaddr-opt82", "qemu-reply-offer-ovmf", "qemu-reply-ack-ovmf", "direct-reply-ack-udhcpc-ciaddr"}

def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    seen = {}
    per_label = collections.Counter()
    for path in sys.argv[2:]:
        iface = {"s0": "relayed", "s1": "direct", "s2": "perfdhcp", "tap0": "qemu"}[os.path.basename(path)[:-5]]
        for b in packets(path):
            # ignore xid/secs/chaddr-random bits when deduplicating: same shape → same seed
            h = hashlib.sha1(b).hexdigest()
            if h in seen:
                continue
            lab = label(b, iface)
            per_label[lab] += 1
            seen[h] = (lab, b)
    # keep at most N per label (many perfdhcp clients are near-identical)
    kept = collections.Counter()
    limit = int(os.environ.get("PER_LABEL", "1"))
    n = 0
    for h, (lab, b) in seen.items():
        if kept[lab] >= limit:
            continue
        if "-reply-" in lab and lab not in KEEP_REPLIES:
            continue
        if lab.startswith("relayed-req-") and "udhcpc-fw" in lab and not any(a in lab for a in ("arch7-pxe", "arch16-http", "arch11-")):
            continue
        kept[lab] += 1
        name = f"{lab}-{h[:8]}"
        with open(os.path.join(out, name), "wb") as f:
            f.write(b)
        n += 1
    for lab, c in sorted(per_label.items()):
        print(f"{c:4d} {kept[lab]:2d} {lab}")
    print("written", n)

main()
