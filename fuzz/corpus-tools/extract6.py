#!/usr/bin/env python3
"""Extract DHCPv6 UDP payloads (ports 546/547) from pcaps into one file per packet.

Usage: extract6.py OUTDIR TOOL=FILE.pcap ...   (TOOL names the capture: ipxe-lab, dhclient, perfdhcp)
Deduplicates by content, names each file <tool>-<type>-<traits>-<sha1[:8]>, and keeps
PER_LABEL (default 1) packets per name: perfdhcp's clients are near-identical."""
import collections, hashlib, os, struct, sys

TYPES = {1: "solicit", 2: "advertise", 3: "request", 4: "confirm", 5: "renew", 6: "rebind", 7: "reply",
         8: "release", 9: "decline", 10: "reconfigure", 11: "inforeq", 12: "relayforw", 13: "relayrepl"}

def packets(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    e = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(e + "IIII", data[off:off + 16])
        frame = data[off + 16: off + 16 + incl]
        off += 16 + incl
        if struct.unpack(">H", frame[12:14])[0] != 0x86DD or frame[14 + 6] != 17:
            continue
        u = 14 + 40
        sport, dport, ulen = struct.unpack(">HHH", frame[u:u + 6])
        if {sport, dport} & {546, 547}:
            yield frame[u + 8: u + ulen]

def options(b):
    """Top-level option codes of a client/server message."""
    codes, i = [], 4
    while i + 4 <= len(b):
        code, length = struct.unpack(">HH", b[i:i + 4])
        codes.append(code)
        i += 4 + length
    return codes

def label(b, tool):
    codes = options(b)
    parts = [tool, TYPES.get(b[0], "type%d" % b[0])]
    for code, name in ((14, "rapid"), (15, "userclass"), (16, "vendorclass"), (61, "arch"), (59, "bootfile")):
        if code in codes:
            parts.append(name)
    return "-".join(parts)

def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    limit = int(os.environ.get("PER_LABEL", "1"))
    kept, written = collections.Counter(), 0
    seen = set()
    for arg in sys.argv[2:]:
        tool, path = arg.split("=", 1)
        for b in packets(path):
            h = hashlib.sha1(b).hexdigest()
            if h in seen:
                continue
            seen.add(h)
            lab = label(b, tool)
            if kept[lab] >= limit:
                continue
            kept[lab] += 1
            with open(os.path.join(out, f"{lab}-{h[:8]}"), "wb") as f:
                f.write(b)
            written += 1
    for lab, c in sorted(kept.items()):
        print(f"{c:2d} {lab}")
    print("written", written)

main()
