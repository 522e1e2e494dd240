#!/usr/bin/env python3
"""Boot storm: N simulated nodes netboot at once from one `ramboot serve`, against the
physical limit of the link they share.

Topology: two network namespaces (rbs<pid>s = server, rbs<pid>c = simulator) joined
by a veth pair, 10.81.0.1/16 <-> 10.81.0.2/16. ramboot serves a stage one (kernel +
initrd) and a root image (64 MiB by default) to `ramboot-sim`, whose nodes each do
DHCP (as a relay) → TFTP of an iPXE binary → DHCP as iPXE → boot.ipxe → kernel and
initrd → agent hello/plan → the image, SHA-256 checked → ready.

The limit: iperf3 over the same veth, server → simulator, same CPU pinning (server
side on CPU 0, client side on CPU 1), 4 streams. limit time = bytes the storm moved /
iperf3's rate; efficiency = limit time / time to all ready. Server memory (VmRSS
sampled every 100 ms, and VmHWM) shows whether it stays flat as N grows.

Python 3.11, stdlib only. Needs root, iperf3, and a release `ramboot` and `ramboot-sim`
(`cargo build --release -p ramboot -p ramboot-lab`).
See README.md next to this file.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))  # bench/lib/netlab.py: the shared plumbing

from netlab import BenchError, Procs, Topology, add_ramboot_bin_arg, cpu_seconds, fmt, guarded  # noqa: E402
from netlab import host_info, install_signal_handlers, lab_network, log, log_tail, med, ns_exec  # noqa: E402
from netlab import cleanup_run, proc_status, render_table, run, wait_until, write_image_manifest  # noqa: E402
from netlab import write_results  # noqa: E402

SUBNET, SERVER_IP, CLIENT_IP, PREFIX = lab_network("10.81.0.0/16")
# The DHCP range, owned by the simulator's namespace as CIDR blocks.
LEASE_FIRST, LEASE_LAST = "10.81.1.0", "10.81.40.255"
LEASED_BLOCKS = [str(n) for n in ipaddress.summarize_address_range(
    ipaddress.IPv4Address(LEASE_FIRST), ipaddress.IPv4Address(LEASE_LAST))]
HTTP_PORT = 18081
MIB = 1 << 20


# --------------------------------------------------------------------------- content


def write_blob(images: Path, data: bytes) -> dict[str, Any]:
    """Store `data` as ramboot's image store does (`sha256/<hex>`); its artifact entry."""
    digest = hashlib.sha256(data).hexdigest()
    blobs = images / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def write_manifest(images: Path, name: str, kind: str, artifacts: dict[str, dict]) -> None:
    write_image_manifest(images, name, kind, artifacts, {"recipe": "bench/storm (random bytes)"})


def prepare_content(workdir: Path, a: argparse.Namespace) -> int:
    """Images, profile and iPXE binary under `workdir`; the bytes one node fetches."""
    images = workdir / "data" / "images"
    kernel, initrd, image = (os.urandom(a.kernel_mib * MIB), os.urandom(a.initrd_mib * MIB),
                             os.urandom(a.image_mib * MIB))
    write_manifest(images, "stage1", "stage1", {
        "kernel": {**write_blob(images, kernel), "format": "bzImage"},
        "initrd": {**write_blob(images, initrd), "format": "cpio.zst"},
    })
    write_manifest(images, "storm", "rootfs", {"rootfs": {**write_blob(images, image), "format": "squashfs"}})
    (workdir / "profiles").mkdir(parents=True, exist_ok=True)
    (workdir / "profiles" / "storm.yaml").write_text(
        "name: storm\nstage1: stage1\nimage: storm\nkernel_args: [console=ttyS0]\n")
    (workdir / "ipxe").mkdir(parents=True, exist_ok=True)
    undionly = Path("/usr/lib/ipxe/undionly.kpxe")
    ipxe = undionly.read_bytes() if undionly.exists() else os.urandom(70_000)
    (workdir / "ipxe" / "undionly.kpxe").write_bytes(ipxe)
    return len(kernel) + len(initrd) + len(image) + len(ipxe)


def ramboot_config(workdir: Path, topo: Topology) -> Path:
    cfg = workdir / "ramboot.yaml"
    cfg.write_text(f"""interface: {topo.server_if}
server_address: {SERVER_IP}
http: {{listen: "{SERVER_IP}:{HTTP_PORT}", max_connections_per_source: 4096}}
tftp: {{listen: "{SERVER_IP}:69", max_sessions: 8192, max_sessions_per_source: 8192}}
dhcp: {{subnet: {SUBNET}, range: [{LEASE_FIRST}, {LEASE_LAST}], router: {SERVER_IP}}}
default_profile: storm
paths: {{data: {workdir}/data, profiles: {workdir}/profiles, ipxe: {workdir}/ipxe}}
""")
    return cfg


# --------------------------------------------------------------------------- measurements


class NeighbourTable:
    """The host's neighbour (ARP) table limits, raised for a storm and put back.

    The server keeps one entry per node on its link; past gc_thresh3 (Linux's
    default: 1,024) the kernel refuses new ones and drops what the server sends to
    those nodes, so they time out (`ramboot doctor` names this for an operator's
    boot network). The limits are the host's, shared by every network namespace.
    """

    KEYS = [f"/proc/sys/net/ipv4/neigh/default/gc_thresh{i}" for i in (1, 2, 3)]

    def __init__(self) -> None:
        self.saved: list[str] | None = None

    def raise_for(self, nodes: int) -> None:
        want = 1 << (nodes + 1024).bit_length()
        current = [Path(k).read_text().strip() for k in self.KEYS]
        if int(current[2]) >= want:
            return
        self.saved = current
        for key, value in zip(self.KEYS, (want // 4, want // 2, want)):
            Path(key).write_text(str(value))
        log(f"neighbour table limits raised to {want // 4}/{want // 2}/{want} for the run (were {'/'.join(current)})")

    def restore(self) -> None:
        if self.saved:
            for key, value in zip(self.KEYS, self.saved):
                Path(key).write_text(value)
            self.saved = None


class RssSampler(threading.Thread):
    """Peak VmRSS of `pid`, sampled every 100 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def status(self, key: str) -> int:
        return proc_status(self.pid).get(key, 0)

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, self.status("VmRSS"))


# Kernel counters of a namespace that say whether anything was lost or waited out:
# (file, group, counter) -> the name the results use.
NET_COUNTERS = {
    ("snmp", "Tcp", "RetransSegs"): "tcp_retrans_segs",
    ("netstat", "TcpExt", "TCPTimeouts"): "tcp_rtos",
    ("netstat", "TcpExt", "TCPMemoryPressures"): "tcp_memory_pressures",
    ("netstat", "TcpExt", "TCPRcvQDrop"): "tcp_rcvq_drops",
    ("netstat", "TcpExt", "TCPToZeroWindowAdv"): "tcp_zero_windows",
    ("snmp", "Udp", "RcvbufErrors"): "udp_rcvbuf_drops",
}


def net_counters(ns: str) -> dict[str, int]:
    """NET_COUNTERS' values in `ns` (/proc/net/snmp and netstat: a header line, then values)."""
    values: dict[tuple[str, str, str], int] = {}
    for file in ("snmp", "netstat"):
        lines = run(["ip", "netns", "exec", ns, "cat", f"/proc/net/{file}"]).stdout.splitlines()
        for head, vals in zip(lines[0::2], lines[1::2]):
            group, names = head.split(":", 1)
            for name, value in zip(names.split(), vals.split(":", 1)[1].split()):
                values[(file, group, name)] = int(value)
    return {key: values.get(where, 0) for where, key in NET_COUNTERS.items()}


# The boot path's control-plane requests, as the server's histogram names them.
CONTROL_ROUTES = {"script": "/boot.ipxe", "hello": "/boot/v1/hello", "plan": "/boot/v1/plan",
                  "events": "/boot/v1/events"}


def server_metrics(topo: Topology) -> tuple[dict[str, dict[str, float | int | None]], int, int]:
    """From the server's /metrics, scraped before it stops: its own time per
    control-plane request (`ramboot_http_request_duration_seconds`: per route, the
    count and the upper bounds of the buckets holding p50 and p99), how often
    its TFTP sessions waited out an ACK (`ramboot_tftp_timeouts_total`), and how
    many DHCP datagrams its full inbox shed at the door (`outcome="dropped_overload"`:
    packets truly lost, each one a node's DHCP retransmission)."""
    text = run(["ip", "netns", "exec", topo.server_ns, "curl", "-sf", "--max-time", "10",
                f"http://{SERVER_IP}:{HTTP_PORT}/metrics"], check=False).stdout
    tftp_timeouts = sum(int(float(line.split()[-1])) for line in text.splitlines()
                        if line.startswith("ramboot_tftp_timeouts_total"))
    dhcp_shed = sum(int(float(line.split()[-1])) for line in text.splitlines()
                    if line.startswith("ramboot_dhcp_messages_total{") and 'outcome="dropped_overload"' in line)
    buckets: dict[str, list[tuple[float, int]]] = {}
    for line in text.splitlines():
        if not line.startswith("ramboot_http_request_duration_seconds_bucket{"):
            continue
        labels, value = line[line.index("{") + 1:].rsplit("} ", 1)
        fields = dict(part.split("=", 1) for part in labels.split(","))
        route, le = fields.get("route", "").strip('"'), fields.get("le", "").strip('"')
        buckets.setdefault(route, []).append((float("inf") if le == "+Inf" else float(le), int(float(value))))
    out: dict[str, dict[str, float | int | None]] = {}
    for name, route in CONTROL_ROUTES.items():
        bs = sorted(buckets.get(route, []))
        count = bs[-1][1] if bs else 0
        at = lambda q: next((le for le, n in bs if n >= q * count), None) if count else None  # noqa: E731
        out[name] = {"count": count, "p50_le": at(0.5), "p99_le": at(0.99)}
    return out, tftp_timeouts, dhcp_shed


def iperf_limit(a: argparse.Namespace, procs: Procs, topo: Topology, workdir: Path) -> float:
    """Bytes/s iperf3 moves server → simulator over the veth, pinned like the storm."""
    pin_s, pin_c = ("0", "1") if a.pin else (None, None)
    server = procs.start(ns_exec(topo.server_ns, pin_s, [a.iperf3, "-s", "-1", "-B", SERVER_IP]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = run(ns_exec(topo.client_ns, pin_c, [a.iperf3, "-c", SERVER_IP, "-R", "-P", "4",
                                                  "-t", str(a.iperf_seconds), "-J"]),
                  timeout=a.iperf_seconds + 30)
        doc = json.loads(out.stdout)
        return doc["end"]["sum_received"]["bits_per_second"] / 8
    finally:
        procs.stop(server)


def one_storm(a: argparse.Namespace, procs: Procs, topo: Topology, workdir: Path, nodes: int,
              run_idx: int, mode: str) -> dict[str, Any]:
    for f in (workdir / "data").glob("ramboot.db*"):
        f.unlink()  # a fresh fleet every time: new nodes, new leases
    cfg = ramboot_config(workdir, topo)
    log_path = workdir / f"ramboot-{nodes}-{run_idx}.log"
    env = {"RUST_LOG": "info" if a.verbose_servers else "warn", "NO_COLOR": "1"}
    pin_s, pin_c = ("0", "1") if a.pin else (None, None)
    with open(log_path, "w") as logf:
        server = procs.start(ns_exec(topo.server_ns, pin_s, [str(a.ramboot_bin), "serve", "--config", str(cfg)], env),
                             stdout=logf, stderr=subprocess.STDOUT)
    tail = lambda: log_tail([log_path])  # noqa: E731
    bound = lambda: ":0043 " in run(["ip", "netns", "exec", topo.server_ns, "cat", "/proc/net/udp"]).stdout  # noqa: E731
    wait_until(server, "ramboot", bound, "bind DHCP port 67", tail, 0.2)
    sampler = RssSampler(server.pid)
    sampler.start()
    cpu_before = cpu_seconds(server.pid)
    report_path = workdir / f"sim-{nodes}-{run_idx}.json"
    sim_cmd = [str(a.sim_bin), "--server", SERVER_IP, "--relay", CLIENT_IP, "--nodes", str(nodes),
               "--timeout-secs", str(a.timeout), "--json", str(report_path)]
    if mode == "size-only":
        sim_cmd.append("--skip-image-hash")
    log(f"storm of {nodes} nodes, image {mode} (run {run_idx + 1}/{a.runs})")
    started = time.monotonic()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    net_before = {side: net_counters(ns) for side, ns in (("server", topo.server_ns), ("sim", topo.client_ns))}
    sim = subprocess.run(ns_exec(topo.client_ns, pin_c, sim_cmd, {"NO_COLOR": "1"}), stdout=subprocess.PIPE,
                         text=True, timeout=a.timeout + 120)
    wall = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    sim_cpu = (children.ru_utime + children.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    cpu = cpu_seconds(server.pid) - cpu_before
    net = {side: {k: v - net_before[side][k] for k, v in net_counters(ns).items()}
           for side, ns in (("server", topo.server_ns), ("sim", topo.client_ns))}
    sampler.done.set()
    sampler.join()
    hwm = sampler.status("VmHWM")
    crashed = server.poll() is not None
    server_latency, server_tftp_timeouts, server_dhcp_shed = ({}, None, None) if crashed else server_metrics(topo)
    procs.stop(server)
    if crashed:
        raise BenchError(f"ramboot exited during the storm:\n{tail()}")
    if not report_path.exists():
        raise BenchError(f"ramboot-sim wrote no report (exit {sim.returncode}):\n{sim.stdout[-2000:]}")
    rep = json.loads(report_path.read_text())
    if rep["failed"]:
        # What the kernel and the server counted says which side lost the nodes.
        raise BenchError(f"{rep['failed']} of {nodes} nodes failed: {rep['errors'][:5]}; "
                         f"retransmits {rep['retransmits']}; net {net}; server latency {server_latency}; "
                         f"server TFTP timeouts {server_tftp_timeouts}; DHCP datagrams shed {server_dhcp_shed}")
    moved = rep["tftp_bytes"] + rep["http_bytes"]
    return {
        "nodes": nodes, "mode": mode, "run": run_idx + 1, "all_ready_secs": rep["all_ready_secs"], "sim_wall_secs": wall,
        "bytes": moved, "boot_p50": rep["boot_p50"], "boot_p99": rep["boot_p99"],
        "phases": {p["phase"]: {"p50": p["p50"], "p99": p["p99"]} for p in rep["phases"]},
        # The node that finished last, phase by phase: what a long tail is made of.
        "slowest": max(rep["results"], key=lambda r: r["ready_at_secs"]),
        "rss_peak": sampler.peak, "rss_hwm": hwm, "server_cpu_secs": cpu, "sim_cpu_secs": sim_cpu,
        # Timeouts waited out: the simulator's own (DHCP, TFTP; per node in its
        # report) and the kernel's in each namespace (TCP retransmit timeouts, UDP
        # queue drops, TCP memory pressure).
        "retransmits": rep["retransmits"], "net": net, "tcp_receive_buffer": rep.get("tcp_receive_buffer"),
        # The server's own time for script, hello, plan and event requests.
        "server_latency": server_latency, "server_tftp_timeouts": server_tftp_timeouts,
        "server_dhcp_shed": server_dhcp_shed,
    }


# --------------------------------------------------------------------------- report


def summarize(results: list[dict], limits: list[float], node_counts: list[int],
              modes: list[str]) -> tuple[list[str], list[dict]]:
    rate = med(limits) or 0.0
    rows, summary = [], []
    for mode, n in [(mode, n) for mode in modes for n in node_counts]:
        rs = [r for r in results if r["nodes"] == n and r.get("mode") == mode and "error" not in r]
        if not rs:
            rows.append([n, mode] + ["-"] * 15)
            continue
        ready = med([r["all_ready_secs"] for r in rs])
        moved = med([r["bytes"] for r in rs])
        limit = moved / rate if rate else None
        eff = limit / ready if limit and ready else None
        rss = max(r["rss_peak"] for r in rs)
        s = {"nodes": n, "mode": mode, "all_ready_secs": ready, "limit_secs": limit, "efficiency": eff, "bytes": moved,
             "boot_p50": med([r["boot_p50"] for r in rs]), "boot_p99": med([r["boot_p99"] for r in rs]),
             "image_p50": med([r["phases"]["image"]["p50"] for r in rs]),
             "rss_peak_mib": rss / MIB, "server_cpu_secs": med([r["server_cpu_secs"] for r in rs]),
             "sim_cpu_secs": med([r["sim_cpu_secs"] for r in rs]),
             "target_met": bool(eff and eff >= 0.8), "runs": len(rs),
             "nodes_with_timeouts": med([r["retransmits"]["nodes"] for r in rs]),
             "tcp_rtos": med([r["net"]["server"]["tcp_rtos"] + r["net"]["sim"]["tcp_rtos"] for r in rs]),
             "udp_drops": med([r["net"]["server"]["udp_rcvbuf_drops"] + r["net"]["sim"]["udp_rcvbuf_drops"]
                               for r in rs]),
             "dhcp_shed": med([r.get("server_dhcp_shed") or 0 for r in rs]),
             # Worst of the control-plane routes' p99 (a bucket's upper bound), server side.
             "server_control_p99_le": med([max((v["p99_le"] or 0) for v in r["server_latency"].values())
                                           if r.get("server_latency") else None for r in rs])}
        # What a core buys: server CPU per GiB it served and per node it booted, and
        # RSS per node (flat memory means this falls as the fleet grows).
        cpu = s["server_cpu_secs"]
        s["server_cpu_secs_per_gib"] = cpu / (moved / (1 << 30)) if cpu is not None and moved else None
        s["server_cpu_ms_per_node"] = cpu * 1e3 / n if cpu is not None else None
        s["rss_kib_per_node"] = rss / 1024 / n
        summary.append(s)
        rows.append([n, mode, f"{moved / (1 << 30):.1f} GiB", fmt(ready, 2), fmt(limit, 2), f"{eff * 100:.0f} %" if eff else "-",
                     fmt(s["boot_p50"], 2), fmt(s["boot_p99"], 2), fmt(s["image_p50"], 2), f"{rss / MIB:.1f}",
                     fmt(s["server_cpu_secs"], 1), fmt(s["server_cpu_secs_per_gib"], 2),
                     fmt(s["server_cpu_ms_per_node"], 1), fmt(s["sim_cpu_secs"], 1),
                     f'{s["nodes_with_timeouts"]:g}', f'{s["tcp_rtos"]:g} / {s["udp_drops"]:g} / {s["dhcp_shed"]:g}',
                     f'<= {s["server_control_p99_le"]:g}' if s["server_control_p99_le"] is not None else "-"])
    head = ["nodes", "image check", "moved", "all ready s", "limit s", "of limit", "boot p50", "boot p99", "image p50",
            "RSS peak MiB", "server CPU s", "CPU s/GiB", "CPU ms/node", "sim CPU s", "nodes timed out",
            "TCP RTOs / UDP drops / DHCP shed", "server control p99 s"]
    return render_table(head, rows, 2), summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="100,500", help="comma-separated fleet sizes")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--image-mib", type=int, default=64)
    ap.add_argument("--kernel-mib", type=int, default=8)
    ap.add_argument("--initrd-mib", type=int, default=8)
    ap.add_argument("--iperf-seconds", type=int, default=5)
    ap.add_argument("--modes", default="verified,size-only",
                    help="image checks to run: verified (SHA-256, the default of ramboot-sim) and/or size-only "
                         "(--skip-image-hash: the simulator's one core no longer hashes for every node)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds one storm may take")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server/client to CPUs 0/1")
    ap.add_argument("--verbose-servers", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    add_ramboot_bin_arg(ap)
    ap.add_argument("--sim-bin", type=Path, default=None,
                    help="the ramboot-sim binary (default: RAMBOOT_SIM_BIN, else beside --ramboot-bin)")
    a = ap.parse_args()
    a.sim_bin = a.sim_bin or Path(os.environ.get("RAMBOOT_SIM_BIN", a.ramboot_bin.with_name("ramboot-sim")))
    node_counts = [int(n) for n in a.nodes.split(",") if n.strip()]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not modes or any(m not in ("verified", "size-only") for m in modes):
        ap.error("--modes: verified and/or size-only")
    if os.geteuid() != 0:
        ap.error("run as root (it creates network namespaces)")
    a.iperf3 = shutil.which("iperf3")
    for what, path in (("iperf3", a.iperf3), ("ramboot", str(a.ramboot_bin)), ("ramboot-sim", str(a.sim_bin)),
                       ("taskset", shutil.which("taskset"))):
        if not path or not Path(path).exists():
            ap.error(f"{what} not found (apt-get install iperf3; cargo build --release -p ramboot -p ramboot-lab)")
    install_signal_handlers()
    procs = Procs()
    topo = Topology("rbs", SERVER_IP, CLIENT_IP, PREFIX)
    workdir = Path(tempfile.mkdtemp(prefix="ramboot-storm-", dir="/var/tmp"))
    results: list[dict] = []
    limits: list[float] = []

    def body() -> None:
        topo.up()
        neighbours.raise_for(max(node_counts))
        # Simulated nodes speak HTTP from their leased addresses (ramboot binds each
        # boot to its lease): the simulator's namespace owns the whole range.
        for block in LEASED_BLOCKS:
            run(["ip", "-n", topo.client_ns, "route", "add", "local", block, "dev", "lo"])
        per_node = prepare_content(workdir, a)
        log(f"{topo.describe()}; each node fetches {per_node / MIB:.1f} MiB; workdir {workdir}")
        for run_idx in range(a.runs):
            limits.append(iperf_limit(a, procs, topo, workdir))
            log(f"iperf3 limit: {limits[-1] * 8 / 1e9:.1f} Gbit/s")
            order = node_counts if run_idx % 2 == 0 else list(reversed(node_counts))
            for n in order:
                for mode in modes:
                    try:
                        results.append(one_storm(a, procs, topo, workdir, n, run_idx, mode))
                        r = results[-1]
                        log(f"  {n} nodes ready in {r['all_ready_secs']:.2f} s, RSS peak {r['rss_peak'] / MIB:.1f} MiB")
                    except (BenchError, subprocess.TimeoutExpired) as e:
                        log(f"run {run_idx + 1}, {n} nodes, {mode}: ERROR {e}")
                        results.append({"nodes": n, "mode": mode, "run": run_idx + 1, "error": str(e)})

    neighbours = NeighbourTable()

    def cleanup() -> None:
        cleanup_run(procs, topo, workdir, keep=False)
        neighbours.restore()

    interrupted = guarded(body, cleanup)
    table, summary = summarize(results, limits, node_counts, modes)
    rate = med(limits)
    print(f"boot storm: ramboot {run([str(a.ramboot_bin), '--version'], check=False).stdout.strip()}, "
          f"image {a.image_mib} MiB + kernel {a.kernel_mib} MiB + initrd {a.initrd_mib} MiB, medians of {a.runs}")
    print(f"limit: iperf3 (4 streams, server -> simulator) {fmt(rate * 8 / 1e9 if rate else None, 1)} Gbit/s "
          f"= {fmt(rate / MIB if rate else None)} MiB/s")
    print("\n".join(table))
    write_results(a.out, {
        "bench": "storm", "when": datetime.datetime.now(datetime.timezone.utc).isoformat(), "host": host_info(),
        "args": {k: str(v) for k, v in vars(a).items()}, "iperf3_bytes_per_sec": limits, "summary": summary,
        "results": results,
    })
    return 1 if interrupted or any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
