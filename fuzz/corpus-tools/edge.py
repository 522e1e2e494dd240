#!/usr/bin/env python3
"""Hand-crafted DHCPv4 edge cases for the seed corpus."""
import os, struct, sys
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
COOKIE = b"\x63\x82\x53\x63"
def hdr(op=1, htype=1, hlen=6, hops=0, xid=0x12345678, secs=0, flags=0x8000, ciaddr=b"\0"*4, yiaddr=b"\0"*4,
        siaddr=b"\0"*4, giaddr=b"\0"*4, chaddr=bytes.fromhex("525400c0ffee") + b"\0"*10, sname=b"\0"*64, file=b"\0"*128):
    return struct.pack(">BBBBIHH", op, htype, hlen, hops, xid, secs, flags) + ciaddr + yiaddr + siaddr + giaddr + chaddr + sname + file
def o(code, val): return bytes([code, len(val)]) + val
END = b"\xff"
disc = o(53, b"\x01") + o(93, b"\x00\x07") + o(60, b"PXEClient:Arch:00007:UNDI:003016") + o(77, b"iPXE")
W = {}
W["truncated-header-100"] = (hdr() + COOKIE + disc + END)[:100]
W["header-no-cookie"] = hdr()
W["cookie-no-options-no-end"] = hdr() + COOKIE
W["empty"] = b""
W["hlen-255"] = hdr(hlen=255) + COOKIE + disc + END
W["hlen-0-htype-0"] = hdr(hlen=0, htype=0) + COOKIE + disc + END
W["hlen-16-infiniband"] = hdr(hlen=16, htype=32, chaddr=bytes(range(16))) + COOKIE + disc + END
W["pad-only-options"] = hdr() + COOKIE + b"\x00" * 300
W["zero-length-options"] = hdr() + COOKIE + b"".join(o(c, b"") for c in (53, 61, 93, 94, 97, 60, 77, 82, 175, 50, 54, 55, 12, 81, 43, 51)) + END
W["option-len-overruns"] = hdr() + COOKIE + o(53, b"\x01") + b"\x3c\xff" + b"PXEClient"
W["option-code-no-len"] = hdr() + COOKIE + o(53, b"\x01") + b"\x5d"
# option overload (52): 3 = both file and sname carry options
sname = (o(93, b"\x00\x10") + o(60, b"HTTPClient:Arch:00016:UNDI:003001") + END).ljust(64, b"\0")
file = (o(77, b"iPXE") + o(175, o(19, b"\x01") + o(39, b"\x01")) + o(82, o(1, b"port7") + o(2, b"\x00\x11")) + END).ljust(128, b"\0")
W["option-overload-3"] = hdr(sname=sname, file=file) + COOKIE + o(53, b"\x01") + o(52, b"\x03") + END
W["option-overload-bad"] = hdr() + COOKIE + o(53, b"\x01") + o(52, b"\x07") + END
W["option-overload-unterminated"] = hdr(sname=b"\x3c" * 64, file=b"\x4d\x80" + b"A" * 126) + COOKIE + o(53, b"\x03") + o(52, b"\x03") + END
W["duplicate-msgtype-and-arch"] = hdr() + COOKIE + o(53, b"\x01") + o(53, b"\x03") + o(93, b"\x00\x07") + o(93, b"\x00\x10\x00\x09\x00") + END
W["arch-odd-len-and-huge"] = hdr() + COOKIE + o(53, b"\x01") + o(93, b"\xff") + o(60, b"HTTPClient:Arch:99999:UNDI") + END
W["split-long-option-43"] = hdr() + COOKIE + o(53, b"\x01") + o(43, b"\x06\x01\x08" + b"A" * 252) + o(43, b"B" * 200) + END
W["opt82-bad-subopts"] = hdr(giaddr=bytes([10, 213, 0, 1]), hops=255) + COOKIE + o(53, b"\x01") + o(82, b"\x01\xfe\x41\x02\x00\x05") + END
W["opt82-no-giaddr"] = hdr() + COOKIE + o(53, b"\x03") + o(82, o(1, b"eth0") + o(2, b"\x02\x00\x00\x00\x00\x01") + o(5, b"\x0a\xd5\x00\x00")) + END
W["ipxe-175-nested-garbage"] = hdr() + COOKIE + o(53, b"\x01") + o(175, b"\x13\x05\x01\xb1\x05\x01\x10") + o(77, b"\x04iPXE\x05extra") + END
W["msgtype-unknown-op-3"] = hdr(op=3) + COOKIE + o(53, b"\xfe") + END
W["bootp-no-msgtype"] = hdr(flags=0) + COOKIE + o(12, b"bootp-host") + END
W["inform-ciaddr"] = hdr(ciaddr=bytes([10, 213, 0, 150]), flags=0) + COOKIE + o(53, b"\x08") + o(55, bytes([1, 3, 6, 15, 66, 67])) + END
W["request-foreign-server-out-of-subnet"] = hdr() + COOKIE + o(53, b"\x03") + o(50, bytes([192, 0, 2, 7])) + o(54, bytes([198, 51, 100, 1])) + END
W["request-ip-in-pool-no-server-id"] = hdr(chaddr=bytes.fromhex("020000aaaaaa") + b"\0"*10) + COOKIE + o(53, b"\x03") + o(50, bytes([10, 213, 0, 109])) + o(61, b"\x01\x02\x00\x00\xaa\xaa\xaa") + END
W["release-trailing-garbage"] = hdr(ciaddr=bytes([10, 213, 0, 100])) + COOKIE + o(53, b"\x07") + o(54, bytes([10, 213, 0, 1])) + END + b"\x00" * 40 + COOKIE + o(53, b"\x04")
W["max-size-1500"] = (hdr() + COOKIE + o(53, b"\x01") + o(57, b"\x05\xdc") + b"".join(o(224 + i % 30, bytes([i]) * 200) for i in range(6)) + END).ljust(1472, b"\0")
for k, v in W.items():
    with open(os.path.join(out, "edge-" + k), "wb") as f:
        f.write(v)
print(len(W))
