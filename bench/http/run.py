#!/usr/bin/env python3
"""HTTP artifact serving: ramboot vs nginx (sendfile on), in one run.

Topology: two network namespaces (rbh<pid>s = server, rbh<pid>c = clients) joined by
a veth pair, 10.81.0.1/24 <-> 10.81.0.2/24. Each server in turn serves the same two
files of random bytes (a 256 MiB "image" and a 64 KiB file) at the same URLs,
http://10.81.0.1:8080/artifacts/sha256/<hex>/<name>: ramboot from its image store,
nginx from a directory laid out like those URLs (hard links to the same bytes). From
the client namespace: one curl stream of the image, wrk with 200 connections on the
small file, and wrk with 200 connections on the image. The server's RSS is sampled
every 100 ms throughout. Results: a table on stdout (medians over --runs), progress
on stderr, JSON in --out.

Python 3.11, stdlib only. Needs root (namespaces), nginx (nginx-light), wrk, curl.
See README.md next to this file.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import json
import os
import re
import select
import shutil
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
from netlab import lab_network, log, log_tail, med, ns_exec, parse_servers, proc_status  # noqa: E402
from netlab import process_tree, ramboot_command, render_table, run, run_servers, split_by_server  # noqa: E402
from netlab import cleanup_run, pin_server_and_clients, pinning_text, write_image_manifest  # noqa: E402
from netlab import stop_server_proc, wait_until, write_results  # noqa: E402

SUBNET, SERVER_IP, CLIENT_IP, PREFIX = lab_network("10.81.0.0/24")  # server .1, client .2
HTTP_PORT = 8080
BIG_NAME, SMALL_NAME = "rootfs.squashfs", "vmlinuz"
ALL_SERVERS = ("ramboot", "nginx")
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
RSS_TARGET = 64 * MIB
THROUGHPUT_TARGET = 0.9  # ramboot / nginx
MARK = "RAMBOOT_BENCH_WRK "

# Only `done` (no `request`/`response`): wrk then runs its static request and parses
# nothing per response, so the script costs nothing while timing.
WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"lat_p50_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
    "%MARK%", summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def server_cpu_seconds(pids: list[int]) -> float | None:
    """utime + stime over the server's process tree (nginx: master + worker); None if
    the server itself is gone."""
    total = 0.0
    for i, pid in enumerate(pids):
        try:
            total += cpu_seconds(pid)
        except OSError:
            if i == 0:
                return None
    return total


def out_octets(pid: int) -> int | None:
    """IpExt OutOctets of `pid`'s network namespace (/proc/<pid>/net/netstat): every
    byte the server namespace sent, IP and TCP headers included."""
    try:
        with open(f"/proc/{pid}/net/netstat") as f:
            lines = [ln.split() for ln in f if ln.startswith("IpExt:")]
        return int(dict(zip(lines[0][1:], lines[1][1:]))["OutOctets"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def tree_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM summed over the server's process tree (nginx: master + worker,
    shared pages counted in both)."""
    out = {"VmRSS": 0, "VmHWM": 0, "processes": 0}
    for p in process_tree(pid):
        st = proc_status(p)
        if st:
            out["VmRSS"] += st.get("VmRSS", 0)
            out["VmHWM"] += st.get("VmHWM", 0)
            out["processes"] += 1
    return out


# --------------------------------------------------------------------------- HTTP probes (from the client namespace)


def http_head_of_get(path: str, timeout: float) -> tuple[int, int | None]:
    """GET `path`, read the status and Content-Length, close without the body."""
    conn = http.client.HTTPConnection(SERVER_IP, HTTP_PORT, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        cl = r.getheader("Content-Length")
        return r.status, int(cl) if cl is not None else None
    finally:
        conn.close()


def http_sha256(path: str, timeout: float, deadline_s: float) -> tuple[int, int, str]:
    """GET `path`: status, body length and the body's SHA-256 (bounded by `deadline_s`)."""
    conn = http.client.HTTPConnection(SERVER_IP, HTTP_PORT, timeout=timeout)
    h, n = hashlib.sha256(), 0
    end = time.monotonic() + deadline_s
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        while chunk := r.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
            if time.monotonic() > end:
                raise BenchError(f"GET {path}: body not read within {deadline_s:g} s")
        return r.status, n, h.hexdigest()
    finally:
        conn.close()


# --------------------------------------------------------------------------- servers


@dataclass
class Artifact:
    key: str  # "big" | "small"
    name: str  # last URL segment
    size: int
    digest: str
    file: Path  # the canonical copy (hard-linked into both servers' trees)

    @property
    def path(self) -> str:
        return f"/artifacts/sha256/{self.digest}/{self.name}"

    @property
    def url(self) -> str:
        return f"http://{SERVER_IP}:{HTTP_PORT}{self.path}"


@dataclass(kw_only=True)
class Server(BaseServer):
    files: dict[str, Artifact]
    www: Path  # nginx's root: <www>/artifacts/sha256/<hex>/<name>


class Ramboot(Server):
    def command(self):
        d = self.workdir
        cmd, env = ramboot_command(self.args, d, ("data", "profiles", "ipxe"), f"""interface: {self.topo.server_if}
server_address: {SERVER_IP}
http: {{listen: "{SERVER_IP}:{HTTP_PORT}", max_connections_per_source: 4096}}
tftp: {{listen: "{SERVER_IP}:10069"}}
dhcp: {{subnet: {SUBNET}, range: [10.81.0.100, 10.81.0.200], port: 10067}}
paths: {{data: {d}/data, profiles: {d}/profiles, ipxe: {d}/ipxe}}
""")
        # The image store as `ramboot images build` leaves it: blobs at
        # images/sha256/<hex> (hard links to the same bytes nginx serves) and one
        # manifest per image (src/images.rs `Manifest`).
        store = d / "data" / "images"
        (store / "sha256").mkdir(parents=True, exist_ok=True)
        for art in self.files.values():
            os.link(art.file, store / "sha256" / art.digest)
            rootfs = {"digest": art.digest, "size": art.size, "format": "squashfs"}
            write_image_manifest(store, f"bench-{art.key}", "rootfs", {"rootfs": rootfs}, {})
        return cmd, env

    def version(self):
        return run([str(self.args.ramboot_bin), "--version"], check=False).stdout.strip()


class Nginx(Server):
    def command(self):
        # Its own prefix, config, pid, lock and temp paths under the workdir: nothing of
        # /etc/nginx, /run/nginx.pid or /var/lib/nginx is touched (-e: the error log
        # before the config is read). Foreground master + 1 worker.
        d = self.workdir
        temp = "\n".join(f"    {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = d / "nginx.conf"
        conf.write_text(f"""daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log stderr {'info' if self.args.verbose_servers else 'warn'};
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    types {{ }}
    default_type application/octet-stream;
{temp}
    server {{
        listen {SERVER_IP}:{HTTP_PORT};
        root {self.www};
        location / {{ }}
    }}
}}
""")
        return [self.args.nginx_bin, "-p", str(d), "-c", str(conf), "-e", "stderr"], {}

    def version(self):
        p = run([self.args.nginx_bin, "-v"], check=False)
        return (p.stderr or p.stdout).strip()


SERVER_CLASSES = {"ramboot": Ramboot, "nginx": Nginx}


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    tool: str  # curl | wrk
    file: str  # "big" | "small"


def make_cases(a: argparse.Namespace) -> list[Case]:
    c = a.connections
    cases = [
        Case("single_256m", f"1 stream, {a.size} (curl)", "curl", "big"),
        Case(f"wrk_{c}_64k", f"{c} connections, {a.small_size} (wrk)", "wrk", "small"),
        Case(f"wrk_{c}_256m", f"{c} connections, {a.size} (wrk)", "wrk", "big"),
    ]
    if a.cases:
        cases = [k for k in cases if k.key in a.cases]
    return cases


# --------------------------------------------------------------------------- the bench


@dataclass
class Bench:
    args: argparse.Namespace
    topo: Topology
    procs: Procs
    work: Path
    www: Path
    files: dict[str, Artifact]
    lua: Path
    versions: dict = field(default_factory=dict)

    # ---- server lifecycle

    def start_server(self, name: str) -> Server:
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))
        srv = SERVER_CLASSES[name](name=name, workdir=workdir, topo=self.topo, args=self.args,
                                   files=self.files, www=self.www)
        cmd, env = srv.command()
        srv.log_path = workdir / "server.out"
        with open(srv.log_path, "w") as logf:
            srv.proc = self.procs.start(ns_exec(self.topo.server_ns, self.args.server_cpus, cmd),
                                        env={**os.environ, **env}, stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        try:
            self.wait_ready(srv)
        except BaseException:
            self.stop_server(srv)
            raise
        return srv

    def wait_ready(self, srv: Server) -> None:
        """Ready once the small file's URL answers (at most 20 s); then both URLs must
        give 200 and the file's length."""
        small = self.files["small"]

        def probe() -> bool:
            try:
                http_head_of_get(small.path, timeout=0.5)
                return True
            except OSError:
                return False

        wait_until(srv.proc, srv.name, probe, "answer HTTP", lambda: log_tail([srv.log_path]), 0.1)
        for art in self.files.values():
            status, length = http_head_of_get(art.path, timeout=5)
            if status != 200 or length != art.size:
                raise BenchError(f"{srv.name}: GET {art.path} gave {status} with Content-Length {length}, "
                                 f"expected 200 and {art.size}:\n{log_tail([srv.log_path])}")

    def stop_server(self, srv: Server) -> dict:
        info = stop_server_proc(self.procs, srv.proc, "exited_early", lambda: log_tail([srv.log_path]))
        tail = log_tail([srv.log_path], 10)
        if tail.strip():
            info["log_tail"] = tail
        return info

    # ---- one client process, with the server sampled while it runs

    def measure(self, srv: Server, argv: list[str], log_path: Path, timeout: float) -> dict:
        """Run `argv` (a client, in this namespace, on the client CPUs) to its exit or
        `timeout`; meanwhile sample the server tree's VmRSS every --rss-interval s.
        Server CPU and bytes sent (IpExt OutOctets of its namespace) around it."""
        a = self.args
        spid = srv.proc.pid
        pids = process_tree(spid)
        cpu0, oct0 = server_cpu_seconds(pids), out_octets(spid)
        rss_peak, samples = tree_memory(spid)["VmRSS"], 1
        t0 = time.perf_counter()
        pid, pidfd = self.procs.spawn_client(argv, log_path)
        timed_out = False
        try:
            deadline = time.monotonic() + timeout
            while True:
                r, _, _ = select.select([pidfd], [], [], a.rss_interval)
                if r:
                    break
                rss_peak = max(rss_peak, tree_memory(spid)["VmRSS"])
                samples += 1
                if time.monotonic() > deadline:
                    timed_out = True
                    self.procs.kill_client(pid)
                    break
            t1 = time.perf_counter()
            rc, ru = self.procs.reap_client(pid)
        except BaseException:
            self.procs.kill_client(pid)
            self.procs.reap_client(pid)
            raise
        mem = tree_memory(spid)
        rss_peak = max(rss_peak, mem["VmRSS"])
        cpu1, oct1 = server_cpu_seconds(pids), out_octets(spid)
        wall = t1 - t0
        client_cpu = ru.ru_utime + ru.ru_stime
        return {
            "rc": rc, "timed_out": timed_out, "wall_s": wall,
            "client_cpu_s": client_cpu, "client_cpu_share": client_cpu / wall if wall > 0 else None,
            "server_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
            "server_out_bytes": (oct1 - oct0) if oct0 is not None and oct1 is not None else None,
            "rss_peak": rss_peak, "rss_samples": samples, "rss_end": mem["VmRSS"],
            "output": log_path.read_text(errors="replace") if log_path.exists() else "",
        }

    def curl_argv(self, art: Artifact) -> list[str]:
        return [self.args.curl_bin, "-sS", "--max-time", f"{self.args.client_timeout:g}", "-o", "/dev/null",
                "-w", "%{speed_download} %{size_download} %{http_code} %{time_total}\n", art.url]

    def wrk_argv(self, art: Artifact, duration: int) -> list[str]:
        a = self.args
        # --timeout: wrk counts a response slower than this as a timeout; a 256 MiB
        # body shared by 200 connections takes longer than the whole run.
        to = 10 if art.key == "small" else duration + 30
        return [a.wrk_bin, "-t", str(a.wrk_threads), "-c", str(a.connections), "-d", f"{duration}s",
                "--timeout", f"{to}s", "-s", str(self.lua), art.url]

    # ---- cases

    def run_curl(self, srv: Server, case: Case, tag: str) -> dict:
        art = self.files[case.file]
        logp = self.work / f"{srv.name}-{case.key}-{tag}.log"
        m = self.measure(srv, self.curl_argv(art), logp, self.args.client_timeout + 5)
        out = m.pop("output")
        logp.unlink(missing_ok=True)
        problem = None
        parts = out.strip().splitlines()[-1].split() if out.strip() else []
        if m["timed_out"]:
            problem = "timed out (killed)"
        elif m["rc"] != 0 or len(parts) != 4:
            problem = f"curl exit {m['rc']}: {out.strip()[-300:]!r}"
        else:
            speed, size, code, total = float(parts[0]), int(float(parts[1])), parts[2], float(parts[3])
            m.update(speed_bytes_s=speed, size_download=size, http_code=code, time_total_s=total)
            if code != "200" or size != art.size:
                problem = f"HTTP {code}, {size} of {art.size} bytes"
        if problem:
            m["problem"] = problem
        return m

    def run_wrk(self, srv: Server, case: Case, tag: str, duration: int | None = None) -> dict:
        art = self.files[case.file]
        duration = duration or self.args.duration
        logp = self.work / f"{srv.name}-{case.key}-{tag}.log"
        m = self.measure(srv, self.wrk_argv(art, duration), logp, duration + 30)
        out = m.pop("output")
        logp.unlink(missing_ok=True)
        line = next((ln for ln in out.splitlines() if ln.startswith(MARK)), None)
        if m["timed_out"]:
            m["problem"] = "timed out (killed)"
        elif m["rc"] != 0 or line is None:
            m["problem"] = f"wrk exit {m['rc']}: {out.strip()[-300:]!r}"
        if line is None:
            return m
        w = json.loads(line[len(MARK):])
        secs = w["duration_us"] / 1e6
        m.update(wrk=w, wrk_text=[ln for ln in out.splitlines() if not ln.startswith(MARK)][-12:])
        m["req_s"] = w["requests"] / secs if secs > 0 else None
        m["bytes_s"] = w["bytes"] / secs if secs > 0 else None
        m["errors"] = w["connect"] + w["read"] + w["write"] + w["timeout"]
        m["non_2xx_3xx"] = w["status"]
        # A 3xx or an empty 2xx would not bring the file's bytes with it.
        if art.key == "small" and w["requests"]:
            m["bytes_per_response"] = w["bytes"] / w["requests"]
            if m["bytes_per_response"] < art.size:
                m.setdefault("problem", f"{m['bytes_per_response']:.0f} bytes per response for a "
                                        f"{art.size}-byte file")
        if w["status"]:
            m.setdefault("problem", f"{w['status']} responses with status > 399")
        if art.key == "small" and not w["requests"]:
            m.setdefault("problem", "no completed request")
        return m

    def integrity(self, srv: Server) -> dict:
        """Untimed: every file's body via GET, SHA-256 compared with the file's."""
        out = {}
        for art in self.files.values():
            status, n, digest = http_sha256(art.path, timeout=30, deadline_s=self.args.client_timeout)
            ok = status == 200 and n == art.size and digest == art.digest
            out[art.key] = {"status": status, "bytes": n, "sha256_ok": ok}
            if not ok:
                raise BenchError(f"{srv.name}: GET {art.path}: HTTP {status}, {n} bytes, sha256 {digest[:16]}... "
                                 f"(expected 200, {art.size}, {art.digest[:16]}...)")
        return out

    def profile(self, srv: Server) -> dict:
        """--perf: `perf record -e cpu-clock --call-graph fp|dwarf` on the server tree during untimed load,
        once per kind: --perf-downloads curls of the image, then --perf-seconds of wrk
        with --connections on the small file. The top symbols (self time) of each."""
        a = self.args
        out = {}
        for kind in ("single_big", "wrk_small"):
            data = srv.workdir / f"perf-{kind}.data"
            pids = ",".join(str(p) for p in process_tree(srv.proc.pid))
            perf = self.procs.start([a.perf_bin, "record", "-q", "-e", "cpu-clock", "-F", "4999",
                                     "--call-graph", a.perf_call_graph, "-p", pids, "-o", str(data)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            time.sleep(0.5)
            try:
                if kind == "single_big":
                    ms = [self.run_curl(srv, Case("perf", "perf", "curl", "big"), f"perf{i}")
                          for i in range(a.perf_downloads)]
                    load = f"{a.perf_downloads} curl(s) of the image, " \
                           f"{fmt(med([(m.get('speed_bytes_s') or 0) / MIB for m in ms]))} MiB/s"
                else:
                    m = self.run_wrk(srv, Case("perf", "perf", "wrk", "small"), "perf", a.perf_seconds)
                    load = f"wrk -c{a.connections} {a.perf_seconds} s on the small file, {fmt(m.get('req_s'))} req/s"
            finally:
                perf.send_signal(2)  # SIGINT: perf writes its file and exits
                try:
                    perf.wait(timeout=30)
                finally:
                    self.procs.stop(perf)
            rep = run([a.perf_bin, "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
                       "--sort", "dso,symbol", "--percent-limit", "0.5"], check=False, timeout=300)
            top = [re.sub(r"(\s+-)+\s*$", "", ln) for ln in rep.stdout.splitlines()
                   if ln.strip() and not ln.startswith("#")][:a.perf_top]
            if not a.keep_workdir:
                data.unlink(missing_ok=True)
            out[kind] = {"load": load, "top": top, "perf_data": str(data) if a.keep_workdir else None,
                         "report_error": rep.stderr.strip()[-500:] if rep.returncode else None}
        return out

    def run_server(self, name: str, run_idx: int, cases: list[Case]) -> dict:
        a = self.args
        srv = self.start_server(name)
        tag = f"run {run_idx + 1}/{a.runs} {name}"
        out: dict[str, Any] = {"server": name, "run": run_idx + 1, "pid": srv.proc.pid, "cases": {}}
        try:
            out["rss_idle"] = tree_memory(srv.proc.pid)["VmRSS"]
            out["processes"] = tree_memory(srv.proc.pid)["processes"]
            if run_idx == 0:
                out["integrity"] = self.integrity(srv)
                log(f"{tag}: ready; GET bodies match the files' SHA-256 (untimed)")
            # Warm-up (not counted): first-request costs, both files into the caches.
            for key in ("small", "big"):
                w = self.run_curl(srv, Case("warmup", "warmup", "curl", key), "warmup")
                if "problem" in w:
                    raise BenchError(f"{name}: warm-up download failed: {w['problem']}")
            if a.perf and run_idx == 0:
                out["perf"] = self.profile(srv)
                for p in out["perf"].values():
                    log(f"{tag}: perf, top symbols (self) during {p['load']}:\n    " + "\n    ".join(p["top"][:20]))
            for case in cases:
                if srv.proc.poll() is not None:
                    raise BenchError(f"{name} exited ({srv.proc.returncode}):\n{log_tail([srv.log_path])}")
                if case.tool == "curl":
                    ms = []
                    for rep in range(a.repeat):
                        m = self.run_curl(srv, case, f"r{run_idx}-{rep}")
                        ms.append(m)
                        log(f"{tag}: {case.label} [{rep + 1}/{a.repeat}]: " + (
                            m["problem"] if "problem" in m else
                            f"{m['speed_bytes_s'] / MIB:,.0f} MiB/s, server CPU {fmt(m['server_cpu_s'], 2)} s, "
                            f"RSS peak {m['rss_peak'] / MIB:.1f} MiB, curl CPU {m['client_cpu_share']:.0%} of wall"))
                    ok = [m for m in ms if "problem" not in m]
                    out["cases"][case.key] = self.case_figures(ms, ok, mib_s=med([m["speed_bytes_s"] / MIB for m in ok]))
                else:
                    m = self.run_wrk(srv, case, f"r{run_idx}")
                    ms = [m]
                    ok = [m] if "problem" not in m else []
                    w = m.get("wrk", {})
                    log(f"{tag}: {case.label}: " + (f"PROBLEM {m['problem']}; " if "problem" in m else "") + (
                        f"{fmt(m.get('req_s'), 0)} req/s, {fmt((m.get('bytes_s') or 0) / MIB, 0)} MiB/s, "
                        f"{w.get('requests')} responses, errors {m.get('errors')}, status>399 {w.get('status')}, "
                        f"server CPU {fmt(m['server_cpu_s'], 2)} s, RSS peak {m['rss_peak'] / MIB:.1f} MiB, "
                        f"wrk CPU {m['client_cpu_share']:.0%} of wall"))
                    out["cases"][case.key] = self.case_figures(
                        ms, ok, mib_s=(m["bytes_s"] / MIB) if ok and m.get("bytes_s") is not None else None,
                        req_s=m.get("req_s") if ok else None,
                        responses=w.get("requests"), errors=m.get("errors"), non_2xx_3xx=m.get("non_2xx_3xx"),
                        lat_p50_ms=w["lat_p50_us"] / 1000 if ok else None,
                        lat_p99_ms=w["lat_p99_us"] / 1000 if ok else None)
                time.sleep(0.5)  # let closed connections drain before the next case
            mem = tree_memory(srv.proc.pid)
            out["vm_hwm"] = mem["VmHWM"]
            out["rss_end"] = mem["VmRSS"]
            out["rss_peak"] = max([c["rss_peak"] for c in out["cases"].values()] + [out["rss_idle"]])
        finally:
            out["server_stop"] = self.stop_server(srv)
            if not a.keep_workdir:
                shutil.rmtree(srv.workdir, ignore_errors=True)
        return out

    @staticmethod
    def case_figures(ms: list[dict], ok: list[dict], **figures: Any) -> dict:
        cpu = [m for m in ok if m["server_cpu_s"] is not None and m["server_out_bytes"]]
        sent = sum(m["server_out_bytes"] for m in cpu)
        wall = sum(m["wall_s"] for m in ok)
        return {
            **figures,
            # Server CPU per GiB it put on the wire (10 ms ticks: fine over seconds).
            "server_cpu_s_per_gib": (sum(m["server_cpu_s"] for m in cpu) / (sent / GIB)) if sent else None,
            "server_wire_mib_s": (sum(m["server_out_bytes"] or 0 for m in ok) / MIB / wall) if wall else None,
            "server_cpu_share": (sum(m["server_cpu_s"] or 0 for m in ok) / wall) if wall else None,
            "client_cpu_share": (sum(m["client_cpu_s"] for m in ok) / wall) if wall else None,
            "rss_peak": max(m["rss_peak"] for m in ms),
            "failed": len(ms) - len(ok),
            "problems": [m["problem"] for m in ms if "problem" in m][:5],
            "measurements": ms,
        }


# --------------------------------------------------------------------------- summary

# (case kind, figure key, label, digits, throughput: ratio and 0.9x target)
METRICS = {
    "curl": [("mib_s", "MiB/s (curl)", 0, True), ("server_cpu_s_per_gib", "server CPU s/GiB", 3, False),
             ("server_cpu_share", "server CPU share", 2, False),
             ("client_cpu_share", "client CPU share", 2, False), ("rss_peak_mib", "peak RSS MiB", 1, False)],
    "wrk_small": [("req_s", "requests/s", 0, True), ("mib_s", "MiB/s (wrk)", 0, True),
                  ("lat_p50_ms", "latency p50 ms", 2, False), ("lat_p99_ms", "latency p99 ms", 2, False),
                  ("errors", "socket errors", 0, False), ("non_2xx_3xx", "status > 399", 0, False),
                  ("server_cpu_s_per_gib", "server CPU s/GiB", 3, False),
                  ("server_cpu_share", "server CPU share", 2, False),
                  ("client_cpu_share", "client CPU share", 2, False), ("rss_peak_mib", "peak RSS MiB", 1, False)],
    "wrk_big": [("mib_s", "MiB/s (wrk)", 0, True), ("server_wire_mib_s", "MiB/s sent (server)", 0, False),
                ("responses", "completed responses", 0, False), ("errors", "socket errors", 0, False),
                ("server_cpu_s_per_gib", "server CPU s/GiB", 3, False),
                ("server_cpu_share", "server CPU share", 2, False),
                ("client_cpu_share", "client CPU share", 2, False), ("rss_peak_mib", "peak RSS MiB", 1, False)],
}


def case_kind(c: Case) -> str:
    return "curl" if c.tool == "curl" else ("wrk_small" if c.file == "small" else "wrk_big")


def summarize(results: list[dict], servers: list[str], cases: list[Case]) -> dict:
    summary: dict[str, Any] = {"servers": {}, "ratios": {}, "targets": {}}
    for name in servers:
        rs, errors = split_by_server(results, name)
        s: dict[str, Any] = {"runs_ok": len(rs), "errors": errors}
        for c in cases:
            cs = [r["cases"][c.key] for r in rs if c.key in r["cases"]]
            fig = {k: med([x.get(k) for x in cs]) for k, _, _, _ in METRICS[case_kind(c)] if k != "rss_peak_mib"}
            # Worst case over runs for memory and for errors.
            fig["rss_peak_mib"] = max((x["rss_peak"] for x in cs), default=0) / MIB if cs else None
            for k in ("errors", "non_2xx_3xx"):
                if k in fig:
                    fig[k] = max((x.get(k) or 0 for x in cs), default=None) if cs else None
            fig["failed"] = sum(x["failed"] for x in cs)
            fig["problems"] = [p for x in cs for p in x["problems"]][:5]
            s[c.key] = fig
        s["rss_peak_mib"] = max((r["rss_peak"] for r in rs), default=0) / MIB if rs else None
        s["vm_hwm_mib"] = max((r["vm_hwm"] for r in rs), default=0) / MIB if rs else None
        s["rss_idle_mib"] = med([r["rss_idle"] / MIB for r in rs])
        s["processes"] = rs[0]["processes"] if rs else None
        summary["servers"][name] = s
    if "ramboot" in servers and "nginx" in servers:
        rb, ng = summary["servers"]["ramboot"], summary["servers"]["nginx"]
        for c in cases:
            for k, _, _, thr in METRICS[case_kind(c)]:
                if thr and rb[c.key].get(k) and ng[c.key].get(k):
                    ratio = rb[c.key][k] / ng[c.key][k]
                    summary["ratios"][f"{c.key}.{k}"] = ratio
                    summary["targets"][f"{c.key}.{k} >= {THROUGHPUT_TARGET}x nginx"] = ratio >= THROUGHPUT_TARGET
    if "ramboot" in servers and summary["servers"]["ramboot"]["runs_ok"]:
        rb = summary["servers"]["ramboot"]
        worst = max(rb["rss_peak_mib"] or 0, rb["vm_hwm_mib"] or 0)
        summary["targets"][f"ramboot RSS < {RSS_TARGET // MIB} MiB"] = worst < RSS_TARGET / MIB
    return summary


def table(summary: dict, servers: list[str], cases: list[Case], args: argparse.Namespace) -> str:
    both = "ramboot" in servers and "nginx" in servers
    head = ["case", "metric"] + servers + (["ramboot/nginx"] if both else [])
    rows = []
    for c in cases:
        for i, (k, label, digits, thr) in enumerate(METRICS[case_kind(c)]):
            row = [c.label if i == 0 else "", label]
            for n in servers:
                s = summary["servers"][n]
                if not s["runs_ok"]:
                    row.append("error")
                    continue
                cell = fmt(s[c.key].get(k), digits)
                if i == 0 and s[c.key]["failed"]:
                    cell += f" !{s[c.key]['failed']}"
                row.append(cell)
            if both:
                r = summary["ratios"].get(f"{c.key}.{k}")
                row.append(f"{r:.2f}x" if r else "")
            rows.append(row)
    for label, key in (("overall peak RSS MiB (sampled)", "rss_peak_mib"), ("VmHWM MiB at the end", "vm_hwm_mib"),
                       ("RSS MiB when idle", "rss_idle_mib")):
        row = [label, ""] + [fmt(summary["servers"][n].get(key), 1) for n in servers]
        rows.append(row + ([""] if both else []))
    pin = (f"server pinned to CPU {args.server_cpus}, clients and this script to CPU "
           f"{','.join(map(str, sorted(args.client_cpus)))} (taskset/sched_setaffinity)" if args.pin else "no pinning")
    out = [
        f"HTTP artifact serving, median of {args.runs} run(s) (curl: median of {args.repeat} downloads per run; "
        f"wrk: -t{args.wrk_threads} -c{args.connections} -d{args.duration}s); {pin}",
    ] + render_table(head, rows, left=2)
    if "nginx" in servers and summary["servers"]["nginx"].get("processes", 0) and \
            summary["servers"]["nginx"]["processes"] > 1:
        out.append("nginx RSS/CPU: master + worker summed (shared pages counted twice)")
    out.append("'!N': N measurements failed (excluded); CPU share = CPU s / wall s of the client's run; "
               "wrk MiB/s counts every body byte read, finished responses or not")
    for t, ok in summary["targets"].items():
        extra = ""
        if t.startswith("ramboot RSS"):
            rb = summary["servers"]["ramboot"]
            extra = f" (peak sampled {fmt(rb['rss_peak_mib'], 1)} MiB, VmHWM {fmt(rb['vm_hwm_mib'], 1)} MiB)"
        else:
            extra = f" ({summary['ratios'][t.split(' ')[0]]:.2f}x)"
        out.append(f"target {t}: {'met' if ok else 'NOT met'}{extra}")
    for n in servers:
        for e in summary["servers"][n]["errors"]:
            out.append(f"{n}: ERROR {e}")
        for c in cases:
            for p in summary["servers"][n][c.key]["problems"]:
                out.append(f"{n} {c.key}: {p}")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_size(s: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)\s*", s, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (e.g. 256MiB, 64KiB, 1048576)")
    n = int(float(m.group(1)) * {"": 1, "k": KIB, "m": MIB, "g": GIB}[m.group(2).lower()])
    if n < 1:
        raise argparse.ArgumentTypeError("size must be at least 1 byte")
    return n


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="repetitions; the table shows medians")
    ap.add_argument("--size", default="256MiB", help="the image's size (bytes, or with KiB/MiB/GiB)")
    ap.add_argument("--small-size", default="64KiB", help="the small file's size")
    ap.add_argument("--connections", type=int, default=200, help="wrk connections")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk case")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (the client side has one CPU)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="curl downloads per run of the single-stream case (the run's figure is their median)")
    add_servers_arg(ap, ALL_SERVERS)
    ap.add_argument("--cases", default="", help="comma-separated case keys (default: all; see the JSON)")
    ap.add_argument("--rss-interval", type=float, default=0.1, help="seconds between RSS samples")
    ap.add_argument("--client-timeout", type=float, default=60.0, help="seconds before a curl is killed")
    ap.add_argument("--perf", action="store_true",
                    help="in run 1, perf record (cpu-clock, -g) each server during extra untimed load (curls of "
                         "the image, then wrk on the small file) and report its top symbols (self time)")
    ap.add_argument("--perf-top", type=int, default=25, help="symbols kept from the perf report")
    ap.add_argument("--perf-downloads", type=int, default=3, help="curl downloads of the image while perf records")
    ap.add_argument("--perf-call-graph", default="fp",
                    help="perf record --call-graph: fp, or dwarf to see through libc (bigger, slower)")
    ap.add_argument("--perf-seconds", type=int, default=3, help="seconds of wrk on the small file while perf records")
    add_ramboot_bin_arg(ap)
    ap.add_argument("--nginx-bin", default="/usr/sbin/nginx")
    ap.add_argument("--wrk-bin", default="/usr/bin/wrk")
    ap.add_argument("--curl-bin", default="/usr/bin/curl")
    ap.add_argument("--perf-bin", default=shutil.which("perf") or "/usr/bin/perf")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="don't pin the server to CPU 0 and the clients (and this script) to the others")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--workdir", default="/dev/shm", help="where the served files go (tmpfs)")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--verbose-servers", action="store_true")
    a = ap.parse_args()
    parse_servers(ap, a, ALL_SERVERS)
    a.cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    try:
        a.size_bytes, a.small_size_bytes = parse_size(a.size), parse_size(a.small_size)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    if min(a.runs, a.connections, a.duration, a.wrk_threads, a.repeat, a.perf_downloads, a.perf_seconds, a.perf_top) < 1 or a.client_timeout <= 0 \
            or not 0.01 <= a.rss_interval <= 5:
        ap.error("--runs, --connections, --duration, --wrk-threads, --repeat, --perf-* and --client-timeout "
                 "must be positive; --rss-interval 0.01..5")
    if a.connections < a.wrk_threads:
        ap.error("--connections must be >= --wrk-threads")
    pin_server_and_clients(a)
    return a


def preflight(a: argparse.Namespace, cases: list[Case]) -> None:
    need = common_needs(a, shutil.which("ip") or "ip", shutil.which("taskset") or "taskset")
    if "nginx" in a.servers:
        need["nginx"] = a.nginx_bin
    if any(c.tool == "wrk" for c in cases):
        need["wrk"] = a.wrk_bin
    need["curl"] = a.curl_bin
    if a.perf:
        need["perf"] = a.perf_bin
    missing = {k: v for k, v in need.items() if not os.access(v, os.X_OK)}
    if missing:
        # Not installed from here: nginx's postinst would start the system service.
        raise BenchError("missing: " + ", ".join(f"{k} ({v})" for k, v in missing.items()) +
                         " (ramboot: cargo build --release, or --ramboot-bin; others: apt-get install "
                         "nginx-light wrk curl, then stop and disable the nginx service it starts)")
    if not cases:
        raise BenchError("no cases selected")
    os.makedirs(a.workdir, exist_ok=True)
    free = shutil.disk_usage(a.workdir).free
    if free < 2 * a.size_bytes + 64 * MIB:
        raise BenchError(f"{a.workdir}: {free // MIB} MiB free, need about {(a.size_bytes + 64 * MIB) // MIB}")


def write_random(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            chunk = os.urandom(min(left, 1 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    os.chmod(path, 0o644)
    return h.hexdigest()


def main() -> int:
    args = parse_args()
    cases = make_cases(args)
    install_signal_handlers()
    try:
        preflight(args, cases)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    topo, procs = Topology("rbh", SERVER_IP, CLIENT_IP, PREFIX), Procs()
    work = Path(tempfile.mkdtemp(prefix="rbh-", dir=args.workdir))
    results: list[dict] = []
    started = datetime.datetime.now(datetime.timezone.utc)
    bench = None

    def body() -> None:
        nonlocal bench
        # The files: random bytes, world-readable (nginx's worker runs as nobody).
        os.chmod(work, 0o755)
        src = work / "files"
        src.mkdir(mode=0o755)
        files = {}
        for key, name, size in (("big", BIG_NAME, args.size_bytes), ("small", SMALL_NAME, args.small_size_bytes)):
            p = src / key
            files[key] = Artifact(key=key, name=name, size=size, digest=write_random(p, size), file=p)
        if files["big"].digest == files["small"].digest:
            raise BenchError("--size and --small-size gave the same file")
        # nginx's root: the same bytes (hard links) at the same paths as ramboot's URLs.
        www = work / "www"
        for art in files.values():
            d = www / "artifacts" / "sha256" / art.digest
            d.mkdir(parents=True)
            os.link(art.file, d / art.name)
        for d in [www, *www.rglob("*")]:
            if d.is_dir():
                os.chmod(d, 0o755)
        lua = work / "done.lua"
        lua.write_text(WRK_LUA.replace("%MARK%", MARK))
        bench = Bench(args=args, topo=topo, procs=procs, work=work, www=www, files=files, lua=lua)
        for name in args.servers:
            bench.versions[name] = SERVER_CLASSES[name](name=name, workdir=work, topo=topo, args=args,
                                                        files=files, www=www).version()
        for tool, cmd in (("curl", [args.curl_bin, "--version"]), ("wrk", [args.wrk_bin, "-v"])):
            p = run(cmd, check=False)
            bench.versions[tool] = ((p.stdout or p.stderr).strip().splitlines() or [""])[0]
        if args.pin:
            os.sched_setaffinity(0, args.client_cpus)  # clients inherit it; servers get taskset
        topo.up()
        topo.enter_client()
        log(f"{topo.describe()}; image {args.size_bytes:,} bytes sha256 {files['big'].digest[:16]}..., "
            f"small file {args.small_size_bytes:,} bytes; servers: {', '.join(args.servers)} on "
            f"{SERVER_IP}:{HTTP_PORT}; pinning: {pinning_text(args)}")
        run_servers(args, results, lambda name, run_idx: bench.run_server(name, run_idx, cases))

    interrupted = guarded(body, lambda: cleanup_run(procs, topo, work, args.keep_workdir))

    summary = summarize(results, args.servers, cases)
    doc = {
        "benchmark": "http-artifacts",
        "started_utc": started.isoformat(timespec="seconds"),
        "complete": not interrupted,
        "host": host_info(),
        "versions": bench.versions if bench else {},
        "settings": {
            "runs": args.runs, "size_bytes": args.size_bytes, "small_size_bytes": args.small_size_bytes,
            "connections": args.connections, "duration_s": args.duration, "wrk_threads": args.wrk_threads,
            "repeat": args.repeat, "rss_interval_s": args.rss_interval, "client_timeout_s": args.client_timeout,
            "cases": [vars(c) for c in cases],
            "pinning": {"server": args.server_cpus,
                        "clients": sorted(args.client_cpus) if args.client_cpus else None},
            "ramboot_bin": str(args.ramboot_bin), "nginx_bin": args.nginx_bin, "workdir": args.workdir,
            "urls": {k: a.url for k, a in bench.files.items()} if bench else {},
            "file_sha256": {k: a.digest for k, a in bench.files.items()} if bench else {},
            "rss": "VmRSS of the server's process tree, sampled every rss_interval_s during each case; "
                   "vm_hwm: VmHWM at the end of the run",
            "server_out_bytes": "IpExt OutOctets of the server namespace (IP+TCP headers included)",
        },
        "summary": summary,
        "runs": results,
    }
    write_results(args.out, doc)
    if results:
        print(table(summary, args.servers, cases, args))
    log(f"JSON: {args.out}")
    failed = any("error" in r for r in results) or any(
        c.get("failed") for r in results for c in r.get("cases", {}).values())
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
