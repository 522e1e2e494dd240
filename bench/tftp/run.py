#!/usr/bin/env python3
"""TFTP read throughput: ramboot vs tftpd-hpa vs dnsmasq, in one run.

Topology: two network namespaces (rbt<pid>s = server, rbt<pid>c = clients) joined by
a veth pair, 10.79.0.1/24 <-> 10.79.0.2/24. Each server in turn serves one file of
random bytes (1 MiB by default) on 10.79.0.1:69; clients (atftp by default) fetch it
from the client namespace: one client at a time and --clients at once, with default
options (blksize 512, lockstep) and with blksize 1468 + windowsize 16. Every download
is checked against the file's SHA-256. Results: a table on stdout (medians over
--runs), progress on stderr, JSON in --out.

Python 3.11, stdlib only. Needs root (namespaces), atftp, tftpd-hpa, dnsmasq.
See README.md next to this file.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pwd
import re
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))  # bench/lib/netlab.py: the shared plumbing

from netlab import BaseServer, BenchError, Procs, Topology, add_ramboot_bin_arg, add_servers_arg  # noqa: E402
from netlab import common_needs, cpu_seconds, fmt, guarded, host_info, install_signal_handlers  # noqa: E402
from netlab import lab_network, log, log_tail, med, ns_exec, parse_servers, percentile  # noqa: E402
from netlab import ramboot_command, render_table, run, run_servers, split_by_server  # noqa: E402
from netlab import cleanup_run, pin_server_and_clients, pinning_text, sha256_file  # noqa: E402
from netlab import stop_server_proc, wait_until, write_results  # noqa: E402

SUBNET, SERVER_IP, CLIENT_IP, PREFIX = lab_network("10.79.0.0/24")  # server .1, client .2
TFTP_PORT = 69
FILE_NAME = "bench.bin"
ALL_SERVERS = ("ramboot", "tftpd-hpa", "dnsmasq")
MIB = 1 << 20


def server_cpu_seconds(pid: int) -> float | None:
    """utime + stime + reaped children's (tftpd-hpa forks one per transfer); None if gone."""
    try:
        return cpu_seconds(pid, children=True)
    except OSError:
        return None


def udp_counters(pid: int | str) -> dict[str, int]:
    """The Udp: line of /proc/<pid>/net/snmp: counters of that process's namespace."""
    try:
        with open(f"/proc/{pid}/net/snmp") as f:
            lines = [ln.split() for ln in f if ln.startswith("Udp:")]
        return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:])}
    except (OSError, IndexError, ValueError):
        return {}


# --------------------------------------------------------------------------- TFTP probe


def tftp_probe(options: dict[str, str], timeout: float) -> dict:
    """Send one RRQ with `options` from this namespace; report what came back.

    An OACK's options are what the server granted; DATA 1 means it granted none; an
    ERROR is passed on. The session is then ended with ERROR 8 (as a PXE ROM does
    after reading tsize), so no transfer runs.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        rrq = struct.pack("!H", 1) + FILE_NAME.encode() + b"\0octet\0"
        for k, v in options.items():
            rrq += k.encode() + b"\0" + v.encode() + b"\0"
        s.sendto(rrq, (SERVER_IP, TFTP_PORT))
        try:
            data, addr = s.recvfrom(65536)
        except socket.timeout:
            return {"reply": "none"}
        op = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else -1
        out: dict[str, Any]
        if op == 6:
            parts = data[2:].split(b"\0")
            granted = {parts[i].decode(errors="replace").lower(): parts[i + 1].decode(errors="replace")
                       for i in range(0, len(parts) - 1, 2) if parts[i]}
            out = {"reply": "oack", "granted": granted}
        elif op == 3:
            out = {"reply": "data", "granted": {}}
        elif op == 5:
            code = struct.unpack("!H", data[2:4])[0] if len(data) >= 4 else None
            out = {"reply": "error", "code": code, "message": data[4:].split(b"\0")[0].decode(errors="replace")}
            return out
        else:
            return {"reply": f"opcode {op}"}
        s.sendto(struct.pack("!HH", 5, 8) + b"bench probe done\0", addr)
        return out
    finally:
        s.close()


# --------------------------------------------------------------------------- servers


@dataclass(kw_only=True)
class Server(BaseServer):
    root: Path  # the TFTP root, holding FILE_NAME
    cpu_measurable = True  # class attribute: /proc/<pid>/stat covers the work


class Ramboot(Server):
    def command(self):
        d = self.workdir
        return ramboot_command(self.args, d, ("data", "profiles"), f"""interface: {self.topo.server_if}
server_address: {SERVER_IP}
http: {{listen: "{SERVER_IP}:18080"}}
tftp: {{listen: "{SERVER_IP}:{TFTP_PORT}", max_sessions_per_source: 1024}}
dhcp: {{subnet: {SUBNET}, range: [10.79.0.100, 10.79.0.200], port: 10067}}
paths: {{data: {d}/data, profiles: {d}/profiles, ipxe: {self.root}}}
""")

    def version(self):
        return run([str(self.args.ramboot_bin), "--version"], check=False).stdout.strip()


class TftpdHpa(Server):
    cpu_measurable = False
    def command(self):
        # -L: listen in the foreground; -s: chroot to the root; -u: the user it drops to.
        user = "tftp"
        try:
            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        cmd = [self.args.tftpd_bin, "-L", "-s", str(self.root), "-a", f"{SERVER_IP}:{TFTP_PORT}", "-u", user]
        if self.args.verbose_servers:
            cmd.append("-v")
        return cmd, {}

    def version(self):
        p = run([self.args.tftpd_bin, "-V"], check=False)
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else ""


class Dnsmasq(Server):
    def command(self):
        d = self.workdir
        cmd = [
            self.args.dnsmasq_bin, "--no-daemon", "--conf-file=/dev/null", "--port=0",
            "--enable-tftp", f"--tftp-root={self.root}",
            f"--listen-address={SERVER_IP}", "--bind-interfaces",
            # Default --tftp-max is 50 concurrent transfers: as many as --clients, so a
            # client retrying its RRQ would hit it. ramboot's cap is 1024; same here.
            f"--tftp-max={max(1024, self.args.clients)}",
            f"--pid-file={d / 'dnsmasq.pid'}",
            "--user=root",
            f"--log-facility={d / 'dnsmasq.log'}",
        ]
        if not self.args.verbose_servers:
            cmd.append("--quiet-tftp")
        return cmd, {}

    def version(self):
        return run([self.args.dnsmasq_bin, "--version"], check=False).stdout.splitlines()[0].strip()


SERVER_CLASSES = {"ramboot": Ramboot, "tftpd-hpa": TftpdHpa, "dnsmasq": Dnsmasq}


# --------------------------------------------------------------------------- cases and clients


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    clients: int
    blksize: int | None
    windowsize: int | None
    client: str  # atftp | tftp-hpa | curl


def make_cases(a: argparse.Namespace) -> list[Case]:
    b, w, n = a.blksize, a.windowsize, a.clients
    cases = [
        Case("single_default", "1 client, default (512, lockstep)", 1, None, None, a.default_client),
        Case(f"single_b{b}", f"1 client, blksize {b}", 1, b, None, a.blksize_client),
        Case(f"single_b{b}_w{w}", f"1 client, blksize {b} + windowsize {w}", 1, b, w, "atftp"),
        Case("conc_default", f"{n} clients, default (512, lockstep)", n, None, None, a.default_client),
        Case(f"conc_b{b}_w{w}", f"{n} clients, blksize {b} + windowsize {w}", n, b, w, "atftp"),
    ]
    if a.cases:
        cases = [c for c in cases if c.key in a.cases]
    return cases


def client_argv(a: argparse.Namespace, case: Case, local: Path, trace: bool = False) -> list[str]:
    if case.client == "atftp":
        # --trace prints every packet (the OACK too): only for the untimed OACK check.
        argv = [a.atftp_bin, "--get", "-r", FILE_NAME, "-l", str(local)] + (["--trace"] if trace else [])
        if case.blksize:
            argv += ["--option", f"blksize {case.blksize}"]
        if case.windowsize:
            argv += ["--option", f"windowsize {case.windowsize}"]
        return argv + [SERVER_IP, str(TFTP_PORT)]
    if case.client == "tftp-hpa":  # no options at all: RFC 1350 only
        assert not case.blksize and not case.windowsize
        return [a.tftp_bin, "-v", "-m", "octet", SERVER_IP, str(TFTP_PORT), "-c", "get", FILE_NAME, str(local)]
    if case.client == "curl":  # blksize, no windowsize
        assert not case.windowsize
        argv = [a.curl_bin, "-sS", "--max-time", str(int(a.client_timeout)), "-o", str(local)]
        argv += ["--tftp-blksize", str(case.blksize)] if case.blksize else ["--tftp-no-options"]
        return argv + [f"tftp://{SERVER_IP}:{TFTP_PORT}/{FILE_NAME}"]
    raise ValueError(case.client)


_OACK_KV = re.compile(r"(blksize|windowsize|tsize|timeout)\s*[:=]\s*(\d+)", re.I)


def oack_from_client_log(text: str) -> dict[str, str] | None:
    """atftp --trace prints the OACK it received ("received OACK <blksize: 1468, ...>")."""
    for line in text.splitlines():
        if "received OACK" in line:
            return {k.lower(): v for k, v in _OACK_KV.findall(line)}
    return None


# --------------------------------------------------------------------------- the bench


@dataclass
class Bench:
    args: argparse.Namespace
    topo: Topology
    procs: Procs
    work: Path
    root: Path
    size: int
    digest: str
    versions: dict = field(default_factory=dict)
    grants: dict = field(default_factory=dict)  # server -> probe results (last run)
    spawn_s: float | None = None

    # ---- server lifecycle

    def start_server(self, name: str) -> Server:
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))
        srv = SERVER_CLASSES[name](name=name, workdir=workdir, root=self.root, topo=self.topo, args=self.args)
        cmd, env = srv.command()
        srv.log_path = workdir / "server.out"
        with open(srv.log_path, "w") as logf:
            srv.proc = self.procs.start(ns_exec(self.topo.server_ns, self.args.server_cpus, cmd), env={**os.environ, **env}, stdout=logf,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.wait_ready(srv)
        except BaseException:
            self.stop_server(srv)
            raise
        return srv

    def wait_ready(self, srv: Server) -> None:
        """Ready once it answers an RRQ for the file (at most 20 s)."""
        def probe() -> bool:
            r = tftp_probe({}, timeout=0.5)
            if r["reply"] == "error":
                raise BenchError(f"{srv.name} refused the RRQ: ERROR {r.get('code')} {r.get('message')!r}")
            return r["reply"] in ("oack", "data")

        wait_until(srv.proc, srv.name, probe, "answer an RRQ", lambda: self.log_tail(srv), 0.2)

    def stop_server(self, srv: Server) -> dict:
        info = stop_server_proc(self.procs, srv.proc, "exited_early", lambda: self.log_tail(srv))
        tail = self.log_tail(srv, 10)
        if tail.strip():
            info["log_tail"] = tail
        return info

    @staticmethod
    def log_tail(srv: Server, n: int = 15) -> str:
        return log_tail([srv.log_path, srv.workdir / "dnsmasq.log"], n)

    def probe_options(self) -> dict:
        b, w = str(self.args.blksize), str(self.args.windowsize)
        return {
            "blksize+windowsize+tsize": tftp_probe({"blksize": b, "windowsize": w, "tsize": "0"}, timeout=2),
            "windowsize only": tftp_probe({"windowsize": w}, timeout=2),
        }

    def spawn_overhead(self, n: int = 9) -> float | None:
        """Median seconds to posix_spawn `atftp -V` and see it exit: the start-up cost
        that every timed download includes."""
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            pid, pidfd = self.procs.spawn_client([self.args.atftp_bin, "-V"], self.work / "spawn.log")
            sel = selectors.DefaultSelector()
            try:
                sel.register(pidfd, selectors.EVENT_READ)
                if sel.select(timeout=5):
                    times.append(time.perf_counter() - t0)
                else:
                    self.procs.kill_client(pid)
            finally:
                sel.close()
                self.procs.reap_client(pid)
        return statistics.median(times) if times else None

    # ---- downloads

    def download(self, srv: Server, case: Case, tag: str, trace: bool = False) -> dict:
        """`case.clients` clients at once; per-client times from spawn to exit."""
        ddir = self.work / "dl" / srv.name / f"{case.key}-{tag}"
        ddir.mkdir(parents=True, exist_ok=True)
        a = self.args
        jobs = []
        for i in range(case.clients):
            local = ddir / f"{i}.bin"
            jobs.append({"i": i, "local": local, "log": ddir / f"{i}.log", "argv": client_argv(a, case, local, trace)})
        spid = srv.proc.pid
        s_udp0, c_udp0, cpu0 = udp_counters(spid), udp_counters("self"), server_cpu_seconds(spid)
        sel = selectors.DefaultSelector()
        running: dict[int, dict] = {}
        try:
            for j in jobs:
                j["t0"] = time.perf_counter()
                pid, pidfd = self.procs.spawn_client(j["argv"], j["log"])
                j["pid"] = pid
                running[pid] = j
                sel.register(pidfd, selectors.EVENT_READ, pid)
            deadline = time.monotonic() + a.client_timeout
            while running:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for key, _ in sel.select(timeout=min(left, 1.0)):
                    t1 = time.perf_counter()
                    pid = key.data
                    sel.unregister(key.fileobj)
                    j = running.pop(pid)
                    j["t1"] = t1
                    j["rc"], ru = self.procs.reap_client(pid)
                    j["cpu_s"] = ru.ru_utime + ru.ru_stime
            for pid, j in list(running.items()):  # past the deadline: kill by pidfd, reap
                self.procs.kill_client(pid)
                sel.unregister(self.procs.clients[pid])
                j["rc"], _ = self.procs.reap_client(pid)
                j["t1"] = None
                j["timed_out"] = True
                running.pop(pid)
        finally:
            sel.close()
            for pid in list(running):
                self.procs.kill_client(pid)
                self.procs.reap_client(pid)
        time.sleep(0.05)  # let the last ACKs/ERRORs land before reading counters
        s_udp1, c_udp1, cpu1 = udp_counters(spid), udp_counters("self"), server_cpu_seconds(spid)

        results, failures = [], []
        oacks: dict[str, int] = {}
        for j in jobs:
            rec: dict[str, Any] = {"i": j["i"], "rc": j["rc"]}
            logtext = j["log"].read_text(errors="replace") if j["log"].exists() else ""
            oack = oack_from_client_log(logtext)
            okey = json.dumps(oack, sort_keys=True) if oack is not None else "none seen"
            oacks[okey] = oacks.get(okey, 0) + 1
            problem = None
            if j.get("timed_out"):
                problem = f"no exit within {a.client_timeout:.0f} s (killed)"
            elif j["rc"] != 0:
                problem = f"exit {j['rc']}"
            if j["local"].exists():
                got_size = j["local"].stat().st_size
                got = sha256_file(j["local"])
                j["local"].unlink()
            else:
                got_size, got = None, None
            if problem is None and got != self.digest:
                problem = f"SHA-256 mismatch ({got_size} of {self.size} bytes)"
            if problem is None and j["rc"] == 0 and logtext and re.search(r"(?i)error|abort|timeout", logtext):
                rec["client_log_warning"] = logtext.strip().splitlines()[-1][:200]
            if problem:
                rec["problem"] = problem
                rec["log_tail"] = "\n".join(logtext.strip().splitlines()[-5:])
                failures.append(rec)
                if not a.keep_workdir:
                    j["log"].unlink(missing_ok=True)
                continue
            rec["seconds"] = j["t1"] - j["t0"]
            rec["client_cpu_s"] = j.get("cpu_s")
            results.append(rec)
            if not a.keep_workdir:
                j["log"].unlink(missing_ok=True)
        ok = results
        secs = sorted(r["seconds"] for r in ok)
        ok_idx = {r["i"] for r in ok}
        t_first = min(j["t0"] for j in jobs)
        ends = [j["t1"] for j in jobs if j["i"] in ok_idx]
        # Total throughput: bytes of the good downloads over first spawn -> last good exit.
        span = (max(ends) - t_first) if ends else None
        blk = case.blksize or 512
        d = lambda a0, a1, k: (a1.get(k, 0) - a0.get(k, 0)) if a0 and a1 else None
        ideal = case.clients * (self.size // blk + 1)
        m: dict[str, Any] = {
            "clients": case.clients, "ok": len(ok), "failed": len(failures),
            "total_mib_s": (len(ok) * self.size / MIB / span) if span and ok else None,
            "span_s": span,
            "p50_s": percentile(secs, 50), "p95_s": percentile(secs, 95), "max_s": secs[-1] if secs else None,
            "per_client_mib_s_p50": (self.size / MIB / percentile(secs, 50)) if secs else None,
            **({"oack_seen_by_client": oacks} if trace else {}),
            "server_udp_out": d(s_udp0, s_udp1, "OutDatagrams"),
            "server_udp_in": d(s_udp0, s_udp1, "InDatagrams"),
            "server_sndbuf_errors": d(s_udp0, s_udp1, "SndbufErrors"),
            "client_udp_in": d(c_udp0, c_udp1, "InDatagrams"),
            "client_rcvbuf_errors": d(c_udp0, c_udp1, "RcvbufErrors"),
            "ideal_data_packets": ideal,
            # tftpd-hpa ignores SIGCHLD (children auto-reaped): their CPU is never accounted.
            "server_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None and srv.cpu_measurable else None,
            "client_cpu_s_sum": sum(r["client_cpu_s"] or 0 for r in ok),
            "failures": failures[:10],
        }
        return m

    def describe(self, case: Case, m: dict) -> str:
        extra = (f"; server sent {m['server_udp_out']} datagrams for {m['ideal_data_packets']} DATA blocks"
                 if m["server_udp_out"] is not None else "")
        if m["client_rcvbuf_errors"]:
            extra += f"; client RcvbufErrors {m['client_rcvbuf_errors']}"
        fails = f", {m['failed']} FAILED" if m["failed"] else ""
        if case.clients == 1:
            return f"{fmt(m['total_mib_s'], 1)} MiB/s ({fmt(m['p50_s'] and m['p50_s'] * 1000, 1)} ms){fails}{extra}"
        return (f"total {fmt(m['total_mib_s'], 1)} MiB/s, per client p50 {fmt(m['p50_s'], 3)} s "
                f"p95 {fmt(m['p95_s'], 3)} s, {m['ok']}/{m['clients']} ok{fails}{extra}")

    def run_server(self, name: str, run_idx: int, cases: list[Case]) -> dict:
        a = self.args
        srv = self.start_server(name)
        out: dict[str, Any] = {"server": name, "run": run_idx + 1, "cases": {}}
        try:
            out["probe"] = self.probe_options()
            self.grants[name] = out["probe"]
            log(f"run {run_idx + 1}/{a.runs} {name}: OACK to a probe RRQ: {describe_grant(out['probe'])}")
            warm = self.download(srv, cases[0], "warmup")  # file into caches, first-request costs
            if warm["failed"]:
                raise BenchError(f"{name}: warm-up download failed: {warm['failures'][0]}")
            # What atftp itself was granted, per option set (one untimed --trace download each).
            out["client_oack"] = {}
            for case in cases:
                label = f"blksize {case.blksize}" + (f" + windowsize {case.windowsize}" if case.windowsize else "")
                if case.client != "atftp" or not case.blksize or label in out["client_oack"]:
                    continue
                single = Case(case.key, case.label, 1, case.blksize, case.windowsize, "atftp")
                t = self.download(srv, single, "trace", trace=True)
                seen = next(iter(t["oack_seen_by_client"]))
                out["client_oack"][label] = json.loads(seen) if seen != "none seen" else None
                if t["failed"]:
                    out["client_oack"][label + " (download failed)"] = t["failures"][0]["problem"]
                log(f"run {run_idx + 1}/{a.runs} {name}: atftp asked {label}, OACK granted "
                    f"{out['client_oack'][label]}{' (traced download FAILED)' if t['failed'] else ''}")
            for case in cases:
                reps = a.repeat if case.clients == 1 else 1
                ms = []
                for rep in range(reps):
                    if srv.proc.poll() is not None:
                        raise BenchError(f"{name} exited ({srv.proc.returncode}):\n{self.log_tail(srv)}")
                    m = self.download(srv, case, f"r{run_idx + 1}-{rep}")
                    ms.append(m)
                    log(f"run {run_idx + 1}/{a.runs} {name}: {case.label}"
                        f"{f' [{rep + 1}/{reps}]' if reps > 1 else ''}: {self.describe(case, m)}")
                    for f in m["failures"][:3]:
                        log(f"    client {f['i']}: {f['problem']}: {f['log_tail'][-300:]!r}")
                    time.sleep(0.2)
                ok = [m for m in ms if m["total_mib_s"] is not None]
                cpu = [m["server_cpu_s"] for m in ms if m["server_cpu_s"] is not None]
                pkts = sum(m["server_udp_out"] or 0 for m in ms if m["server_cpu_s"] is not None)
                out["cases"][case.key] = {
                    # 10 ms clock ticks: meaningful for the concurrent cases only.
                    "server_cpu_us_per_datagram": (sum(cpu) * 1e6 / pkts) if cpu and pkts else None,
                    "mib_s": med([m["total_mib_s"] for m in ok]),
                    "p50_s": med([m["p50_s"] for m in ok]),
                    "p95_s": med([m["p95_s"] for m in ok]),
                    "failed": sum(m["failed"] for m in ms),
                    "downloads": sum(m["clients"] for m in ms),
                    "measurements": ms,
                }
        finally:
            out["server_stop"] = self.stop_server(srv)
            if not a.keep_workdir:
                shutil.rmtree(srv.workdir, ignore_errors=True)
        return out


# --------------------------------------------------------------------------- summary


def describe_grant(probe: dict) -> str:
    r = probe.get("blksize+windowsize+tsize", {})
    if r.get("reply") == "oack":
        g = r["granted"]
        return ", ".join(f"{k} {v}" for k, v in g.items()) + ("" if "windowsize" in g else " (windowsize not supported)")
    if r.get("reply") == "data":
        return "no options (answered with DATA)"
    return f"probe: {r}"


def summarize(results: list[dict], servers: list[str], cases: list[Case]) -> dict:
    summary: dict[str, Any] = {"servers": {}, "ratios": {}}
    for name in servers:
        rs, errors = split_by_server(results, name)
        s: dict[str, Any] = {"runs_ok": len(rs), "errors": errors}
        for c in cases:
            cs = [r["cases"][c.key] for r in rs if c.key in r["cases"]]
            s[c.key] = {
                "mib_s": med([x["mib_s"] for x in cs]),
                "p50_s": med([x["p50_s"] for x in cs]),
                "p95_s": med([x["p95_s"] for x in cs]),
                "server_cpu_us_per_datagram": med([x.get("server_cpu_us_per_datagram") for x in cs]),
                "failed": sum(x["failed"] for x in cs),
                "downloads": sum(x["downloads"] for x in cs),
            }
        probes = [r["probe"] for r in rs if "probe" in r]
        if probes:
            g = probes[-1].get("blksize+windowsize+tsize", {})
            s["granted"] = g.get("granted") if g.get("reply") in ("oack", "data") else g
            s["windowsize_supported"] = bool(g.get("granted", {}).get("windowsize"))
        summary["servers"][name] = s
    if "ramboot" in servers:
        rb = summary["servers"]["ramboot"]
        for c in cases:
            for metric, higher_better in (("mib_s", True), ("p50_s", False), ("p95_s", False)):
                if c.clients == 1 and metric != "mib_s":
                    continue
                mine = rb[c.key][metric]
                peers = {n: summary["servers"][n][c.key][metric] for n in servers if n != "ramboot"}
                peers = {n: v for n, v in peers.items() if v}
                if not mine or not peers:
                    continue
                adv = {n: (mine / v if higher_better else v / mine) for n, v in peers.items()}
                best = max(peers, key=(lambda n: peers[n]) if higher_better else (lambda n: -peers[n]))
                summary["ratios"][f"{c.key}.{metric}"] = {
                    "vs_tftpd_hpa": adv.get("tftpd-hpa"), "best_peer": best, "vs_best_peer": adv[best],
                }
    return summary


def table(summary: dict, servers: list[str], cases: list[Case], args: argparse.Namespace) -> str:
    show_hpa = "tftpd-hpa" in servers and "ramboot" in servers
    head = ["case", "metric"] + servers + (["rb/tftpd-hpa"] if show_hpa else []) + ["rb/best peer"]
    rows = []
    for c in cases:
        metrics = [("MiB/s", "mib_s", 1)] if c.clients == 1 else \
            [("total MiB/s", "mib_s", 1), ("per-client p50 s", "p50_s", 3), ("per-client p95 s", "p95_s", 3),
             ("server CPU us/datagram", "server_cpu_us_per_datagram", 1)]
        for label, key, digits in metrics:
            row = [c.label if label == metrics[0][0] else "", label]
            for n in servers:
                s = summary["servers"][n]
                if not s["runs_ok"]:
                    row.append("error")
                    continue
                cell = fmt(s[c.key][key], digits)
                if key == "server_cpu_us_per_datagram" and n == "tftpd-hpa":
                    cell = "n/a"
                elif s[c.key]["failed"]:
                    cell += f" !{s[c.key]['failed']}"
                row.append(cell)
            r = summary["ratios"].get(f"{c.key}.{key}")
            if key == "server_cpu_us_per_datagram":
                rows.append(row + [""] * (len(head) - len(row)))
                continue
            if show_hpa:
                row.append(f"{r['vs_tftpd_hpa']:.2f}x" if r and r["vs_tftpd_hpa"] else "-")
            row.append(f"{r['vs_best_peer']:.2f}x ({r['best_peer']})" if r else "-")
            rows.append(row)
    grant_row = ["OACK to blksize+windowsize+tsize", ""]
    for n in servers:
        g = summary["servers"][n].get("granted")
        if isinstance(g, dict) and "reply" not in g:
            w = g.get("windowsize")
            grant_row.append(f"b{g.get('blksize', '-')} w{w}" if w else
                             (f"b{g.get('blksize', '-')}, no windowsize" if g else "no options"))
        else:
            grant_row.append("-")
    rows.append(grant_row + [""] * (len(head) - len(grant_row)))
    out = [
        f"TFTP read of a {args.size_bytes:,}-byte file, median of {args.runs} run(s)"
        f" (single-client cases: median of {args.repeat} downloads per run)",
    ] + render_table(head, rows, left=2)
    if getattr(args, "spawn_s", None):
        out.append(f"times include client start-up (atftp -V spawn to exit: {args.spawn_s * 1000:.2f} ms)")
    out.append("ratios: ramboot's advantage (>1 = ramboot faster: MiB/s mine/peer, times peer/mine);"
               " '!N': N downloads failed (excluded)")
    # The targets.
    rat = summary["ratios"]
    b, w = args.blksize, args.windowsize
    k = f"single_b{b}_w{w}.mib_s"
    if k in rat and rat[k]["vs_tftpd_hpa"]:
        v = rat[k]["vs_tftpd_hpa"]
        out.append(f"target >= 3x tftpd-hpa, 1 client with windowsize: {v:.2f}x -> {'met' if v >= 3 else 'NOT met'}")
    for ck in ("conc_default", f"conc_b{b}_w{w}"):
        parts = []
        for met in ("p50_s", "p95_s"):
            r = rat.get(f"{ck}.{met}")
            if r:
                parts.append(f"{met[:3]} {r['vs_best_peer']:.2f}x vs {r['best_peer']}")
        if parts:
            ok = all(rat[f"{ck}.{m}"]["vs_best_peer"] >= 1 for m in ("p50_s", "p95_s") if f"{ck}.{m}" in rat)
            out.append(f"target {ck}: per client no slower than the best peer: {', '.join(parts)} -> "
                       f"{'met' if ok else 'NOT met'}")
    for n in servers:
        for e in summary["servers"][n]["errors"]:
            out.append(f"{n}: ERROR {e}")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_size(s: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)\s*", s, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (e.g. 1MiB, 512KiB, 32M, 1048576)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    n = int(float(m.group(1)) * mult)
    if n < 1:
        raise argparse.ArgumentTypeError("size must be at least 1 byte")
    return n


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="repetitions; the table shows medians")
    ap.add_argument("--size", default="1MiB", help="file size (bytes, or with KiB/MiB/GiB)")
    ap.add_argument("--clients", type=int, default=50, help="clients at once in the concurrent cases")
    ap.add_argument("--repeat", type=int, default=5,
                    help="downloads per single-client case and run (the run's figure is their median)")
    ap.add_argument("--blksize", type=int, default=1468)
    ap.add_argument("--windowsize", type=int, default=16)
    add_servers_arg(ap, ALL_SERVERS)
    ap.add_argument("--cases", default="", help="comma-separated case keys (default: all; see the JSON)")
    ap.add_argument("--default-client", choices=("atftp", "tftp-hpa", "curl"), default="atftp",
                    help="client for the default-options cases (atftp and tftp-hpa send no options; "
                         "curl with --tftp-no-options neither)")
    ap.add_argument("--blksize-client", choices=("atftp", "curl"), default="atftp",
                    help="client for the blksize-only case (windowsize cases always use atftp)")
    ap.add_argument("--client-timeout", type=float, default=60.0, help="seconds before a download is killed")
    add_ramboot_bin_arg(ap)
    ap.add_argument("--tftpd-bin", default="/usr/sbin/in.tftpd")
    ap.add_argument("--dnsmasq-bin", default="/usr/sbin/dnsmasq")
    ap.add_argument("--atftp-bin", default="/usr/bin/atftp")
    ap.add_argument("--tftp-bin", default="/usr/bin/tftp", help="tftp-hpa's client")
    ap.add_argument("--curl-bin", default="/usr/bin/curl")
    ap.add_argument("--no-install", dest="install", action="store_false",
                    help="don't apt-get install missing tftpd-hpa/atftp/dnsmasq-base")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="don't pin the server to CPU 0 and the clients (and this script) to the others")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--workdir", default="/dev/shm", help="where the served file and the downloads go (tmpfs)")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--verbose-servers", action="store_true")
    a = ap.parse_args()
    parse_servers(ap, a, ALL_SERVERS)
    a.cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    try:
        a.size_bytes = parse_size(a.size)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    if a.runs < 1 or a.clients < 1 or a.repeat < 1 or a.client_timeout <= 0:
        ap.error("--runs, --clients, --repeat and --client-timeout must be positive")
    if not 8 <= a.blksize <= 65464 or not 1 <= a.windowsize <= 65535:
        ap.error("--blksize must be 8..65464 and --windowsize 1..65535")
    pin_server_and_clients(a)
    return a


PACKAGES = {"tftpd-hpa": "tftpd-hpa", "dnsmasq": "dnsmasq-base", "atftp": "atftp",
            "tftp-hpa": "tftp-hpa", "curl": "curl"}


def stop_debian_service(name: str) -> None:
    """A package's postinst may start its service: stop and disable it again."""
    if Path("/run/systemd/system").exists() and shutil.which("systemctl"):
        run(["systemctl", "disable", "--now", name], check=False, timeout=60)
    elif Path(f"/etc/init.d/{name}").exists():
        run(["invoke-rc.d", name, "stop"], check=False, timeout=60)  # 101 = policy said no: never started
        run(["update-rc.d", name, "disable"], check=False, timeout=60)


def preflight(a: argparse.Namespace, cases: list[Case]) -> None:
    need = common_needs(a, shutil.which("ip") or "ip", shutil.which("taskset") or "taskset")
    clients = {c.client for c in cases}
    if "tftpd-hpa" in a.servers:
        need["tftpd-hpa"] = a.tftpd_bin
    if "dnsmasq" in a.servers:
        need["dnsmasq"] = a.dnsmasq_bin
    for c, b in (("atftp", a.atftp_bin), ("tftp-hpa", a.tftp_bin), ("curl", a.curl_bin)):
        if c in clients:
            need[c] = b
    missing = {k: v for k, v in need.items() if not os.access(v, os.X_OK)}
    installable = [PACKAGES[k] for k in missing if k in PACKAGES]
    if installable and a.install:
        log(f"installing {' '.join(installable)} (apt-get, no recommends) ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "install", "-y", "--no-install-recommends"] + installable, timeout=900, env=env)
        if "tftpd-hpa" in installable:
            stop_debian_service("tftpd-hpa")
        missing = {k: v for k, v in need.items() if not os.access(v, os.X_OK)}
    if missing:
        raise BenchError("missing: " + ", ".join(f"{k} ({v})" for k, v in missing.items()) +
                         " (ramboot: cargo build --release, or --ramboot-bin; others: apt-get install "
                         "tftpd-hpa dnsmasq-base atftp)")
    if not cases:
        raise BenchError("no cases selected")
    os.makedirs(a.workdir, exist_ok=True)


def main() -> int:
    args = parse_args()
    cases = make_cases(args)
    install_signal_handlers()
    try:
        preflight(args, cases)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    topo, procs = Topology("rbt", SERVER_IP, CLIENT_IP, PREFIX), Procs()
    work = Path(tempfile.mkdtemp(prefix="rbt-", dir=args.workdir))
    results: list[dict] = []
    started = datetime.datetime.now(datetime.timezone.utc)
    bench = None

    def body() -> None:
        nonlocal bench
        # The file: random bytes, world-readable (tftpd-hpa drops to user tftp in its chroot).
        root = work / "root"
        root.mkdir()
        os.chmod(work, 0o755)
        os.chmod(root, 0o755)
        h = hashlib.sha256()
        with open(root / FILE_NAME, "wb") as f:
            left = args.size_bytes
            while left > 0:
                chunk = os.urandom(min(left, 1 << 20))
                h.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        os.chmod(root / FILE_NAME, 0o644)
        bench = Bench(args=args, topo=topo, procs=procs, work=work, root=root,
                      size=args.size_bytes, digest=h.hexdigest())
        for name in args.servers:
            bench.versions[name] = SERVER_CLASSES[name](name=name, workdir=work, root=root, topo=topo,
                                                        args=args).version()
        for c, cmd in (("atftp", [args.atftp_bin, "-V"]), ("tftp-hpa", [args.tftp_bin, "-V"]),
                       ("curl", [args.curl_bin, "--version"])):
            if any(k.client == c for k in cases):
                p = run(cmd, check=False)
                bench.versions[c] = ((p.stdout or p.stderr).strip().splitlines() or [""])[0]
        if args.pin:
            os.sched_setaffinity(0, args.client_cpus)  # clients inherit it; servers get taskset
        topo.up()
        topo.enter_client()
        bench.spawn_s = bench.spawn_overhead() if any(c.client == "atftp" for c in cases) else None
        log(f"{topo.describe()}; {args.size_bytes:,}-byte file sha256 {bench.digest[:16]}...; "
            f"servers: {', '.join(args.servers)}; "
            f"pinning: {pinning_text(args)}"
            f"; client start-up (atftp -V) {fmt(bench.spawn_s and bench.spawn_s * 1000, 2)} ms")
        run_servers(args, results, lambda name, run_idx: bench.run_server(name, run_idx, cases))

    interrupted = guarded(body, lambda: cleanup_run(procs, topo, work, args.keep_workdir))

    summary = summarize(results, args.servers, cases)
    doc = {
        "benchmark": "tftp-read",
        "started_utc": started.isoformat(timespec="seconds"),
        "complete": not interrupted,
        "host": host_info(),
        "versions": bench.versions if bench else {},
        "settings": {
            "runs": args.runs, "size_bytes": args.size_bytes, "clients": args.clients, "repeat": args.repeat,
            "blksize": args.blksize, "windowsize": args.windowsize, "client_timeout_s": args.client_timeout,
            "cases": [vars(c) for c in cases],
            "pinning": {"server": args.server_cpus,
                        "clients": sorted(args.client_cpus) if args.client_cpus else None},
            "ramboot_bin": str(args.ramboot_bin), "workdir": args.workdir,
            "file_sha256": bench.digest if bench else None,
            "timing": "per download: posix_spawn of the client to its exit (includes process start-up)",
            "client_startup_s": bench.spawn_s if bench else None,
        },
        "summary": summary,
        "runs": results,
    }
    write_results(args.out, doc)
    args.spawn_s = bench.spawn_s if bench else None
    if results:
        print(table(summary, args.servers, cases, args))
    log(f"JSON: {args.out}")
    failed = any("error" in r for r in results) or any(
        c.get("failed") for r in results for c in r.get("cases", {}).values())
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
