#!/usr/bin/env python3
"""DHCPv4 rate sweep: ramboot vs Kea vs dnsmasq, driven by perfdhcp, in one run.

Topology: two network namespaces (rbb<pid>s = server, rbb<pid>c = client) joined by
a veth pair, 10.77.0.1/16 <-> 10.77.0.2/16. perfdhcp runs in the client namespace
with `-l <veth>`; it behaves as a relay (giaddr = 10.77.0.2) and sends to 10.77.0.1.

`ramboot-pg-2` is two ramboot servers on one PostgreSQL database (`cluster.peers`),
the second in a namespace of its own (10.77.0.3, reached from the client namespace
through a second veth pair): two perfdhcp relays, one per server, each with half
the clients and half the rate, summed. Both servers are pinned to the one server
CPU, so the pair gets the hardware one server gets.

Per server and run: a rate sweep (4-way DORA, 10,000 client MACs) that stops after
the first step with >= 1 % drops, one bisection, a fixed-rate CPU measurement and
one "unlimited offered load" step. Every step starts a fresh server with an empty
lease store. Results: a table on stdout (medians over --runs), JSON in --out.

Python 3.11, stdlib only. Needs root (namespaces), perfdhcp, kea-dhcp4, dnsmasq.
See README.md next to this file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import sqlite3
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
from netlab import lab_network, log, log_tail, med, mem_available, ns_exec, parse_servers  # noqa: E402
from netlab import percentile, ramboot_command, render_table, run, run_servers, split_by_server  # noqa: E402
from netlab import stop_server_proc, wait_until, write_results  # noqa: E402
from pg import PrivatePostgres  # noqa: E402

SUBNET, SERVER_IP, CLIENT_IP, PREFIX = lab_network("10.77.0.0/16")  # server .1, client .2
POOL = ("10.77.1.0", "10.77.60.255")  # 15,360 addresses for 10,000 clients
LEASE_SECS = 3600
DEFAULT_RATES = [100, 250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000]
DROP_LIMIT_PCT = 1.0  # a step passes with fewer drops than this...
MIN_COMPLETION = 0.9  # ...and at least this share of the target rate completed
PROBE_MAC = "02:72:62:00:00:01"  # readiness probe; outside perfdhcp's -R range
# perfdhcp -x t archives every packet: measured ~5.5 KB per packet, two per exchange.
PERFDHCP_BYTES_PER_EXCHANGE = 12 * 1024
ALL_SERVERS = ("ramboot", "ramboot-pg", "ramboot-pg-2", "kea", "kea-pg", "kea-pg-mt", "dnsmasq")
# Kea's multi-threading (off by default in 2.2): worker threads overlap the
# PostgreSQL round trips that bound single-threaded kea-pg.
KEA_MT_THREADS, KEA_MT_QUEUE = 8, 256
# ramboot-pg-2's second server and the client address that relays to it: a second
# veth pair between a namespace of its own and the client namespace.
SECOND_SERVER_IP, SECOND_CLIENT_IP = "10.77.0.3", "10.77.0.4"  # in SUBNET
KEA_PG_SCHEMA = Path("/usr/share/kea/scripts/pgsql/dhcpdb_create.pgsql")


# --------------------------------------------------------------------------- servers


class Server(BaseServer):
    # The run's PostgreSQL cluster, for servers that keep leases in it.
    pg: PrivatePostgres | None = None

    def leases_in_store(self) -> int | None:
        """Leases the server persisted (read after it stopped): a sanity cross-check."""
        return None

    def cleanup(self) -> None:
        """After the server stopped and its lease count was read."""


class Ramboot(Server):
    # Where this server listens (ramboot-pg-2's second server differs) and what
    # else its config says.
    address: str = SERVER_IP
    interface: str | None = None
    cluster_lines: str = ""

    def database_line(self) -> str:
        return ""  # the default: <data>/ramboot.db

    def command(self):
        d, ip = self.workdir, self.address
        return ramboot_command(self.args, d, ("data", "profiles", "ipxe"), f"""{self.database_line()}interface: {self.interface or self.topo.server_if}
server_address: {ip}
http:
  listen: {ip}:18080
tftp:
  listen: {ip}:10069
dhcp:
  subnet: {SUBNET}
  range: [{POOL[0]}, {POOL[1]}]
  lease_time_secs: {LEASE_SECS}
{self.cluster_lines}paths:
  data: {d}/data
  profiles: {d}/profiles
  ipxe: {d}/ipxe
""")

    def leases_in_store(self):
        db = self.workdir / "data" / "ramboot.db"
        if not db.exists():
            return None
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                return con.execute("SELECT count(*) FROM leases").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            return None  # schema changed: the check is best-effort

    def version(self):
        return run([str(self.args.ramboot_bin), "--version"], check=False).stdout.strip()


def step_database(workdir: Path, prefix: str) -> str:
    """A database name for one step's fresh store, from its temp dir's name."""
    return f"{prefix}_{workdir.name.replace('-', '_').lower()}"


class RambootPg(Ramboot):
    """ramboot with `database: postgres://…` on the run's private cluster (unix
    socket, trust authentication: no password), a fresh database per step."""
    # ramboot-pg-2's second server joins its first's database instead.
    shared_db: str | None = None

    def db_name(self) -> str:
        return self.shared_db or step_database(self.workdir, "ramboot")

    def database_line(self) -> str:
        assert self.pg is not None, "ramboot-pg needs the run's PostgreSQL"
        if self.shared_db is None:
            self.pg.create_db(self.db_name())
        return f"database: postgres:///{self.db_name()}?host={self.pg.sockdir}&user=postgres\n"

    def leases_in_store(self):
        if self.shared_db is not None:
            return None  # the first server of the pair counts them
        try:
            return int(self.pg.psql("SELECT count(*) FROM leases", db=self.db_name()).strip())
        except (BenchError, ValueError):
            return None

    def cleanup(self) -> None:
        if self.shared_db is not None:
            return  # the first server of the pair drops it, after both stopped
        try:
            self.pg.drop_db(self.db_name())
        except BenchError as e:
            log(f"  warning: {e}")


class Kea(Server):
    def command(self):
        d = self.workdir
        cfg = {
            "Dhcp4": {
                "interfaces-config": {"interfaces": [self.topo.server_if]},
                "lease-database": self.lease_database(),
                "valid-lifetime": LEASE_SECS,
                "subnet4": [{"id": 1, "subnet": SUBNET, "pools": [{"pool": f"{POOL[0]} - {POOL[1]}"}]}],
                **self.extra_config(),
                "loggers": [{
                    "name": "kea-dhcp4",
                    "output_options": [{"output": str(d / "kea.log")}],
                    "severity": "INFO" if self.args.verbose_servers else "WARN",
                }],
            }
        }
        path = d / "kea-dhcp4.json"
        path.write_text(json.dumps(cfg, indent=2))
        # Own PID/lock files: a system kea-dhcp4 (or a parallel bench) must not clash.
        env = {"KEA_PIDFILE_DIR": str(d), "KEA_LOCKFILE_DIR": str(d), "KEA_LOGGER_DESTINATION": str(d / "kea.log")}
        return [self.args.kea_bin, "-c", str(path)], env

    def extra_config(self) -> dict:
        return {}

    def lease_database(self) -> dict:
        return {
            "type": "memfile",
            "persist": True,
            "name": str(self.workdir / "kea-leases4.csv"),
            "lfc-interval": 0,  # no lease-file cleanup child during a step
        }

    def leases_in_store(self):
        f = self.workdir / "kea-leases4.csv"
        if not f.exists():
            return None
        addrs = set()
        with open(f) as fh:
            next(fh, None)  # header
            for line in fh:
                addrs.add(line.split(",", 1)[0])
        return len(addrs)

    def version(self):
        return run([self.args.kea_bin, "-v"], check=False).stdout.strip()


class KeaPg(Kea):
    """Kea with its PostgreSQL lease back-end, on the run's private cluster: a fresh
    database per step with Kea's own schema (what `kea-admin db-init pgsql` loads)."""

    def database(self) -> str:
        return step_database(self.workdir, "kea")

    def lease_database(self) -> dict:
        assert self.pg is not None, "kea-pg needs the run's PostgreSQL"
        self.pg.create_db(self.database())
        self.pg.psql("", db=self.database(), file=KEA_PG_SCHEMA)
        return {"type": "postgresql", "name": self.database(), "user": "postgres", "host": str(self.pg.sockdir)}

    def leases_in_store(self):
        try:
            return int(self.pg.psql("SELECT count(DISTINCT address) FROM lease4", db=self.database()).strip())
        except (BenchError, ValueError):
            return None

    def cleanup(self) -> None:
        try:
            self.pg.drop_db(self.database())
        except BenchError as e:
            log(f"  warning: {e}")


class KeaPgMt(KeaPg):
    """kea-pg with multi-threading on (its recommended setting with a database)."""

    def extra_config(self) -> dict:
        return {"multi-threading": {"enable-multi-threading": True, "thread-pool-size": KEA_MT_THREADS,
                                    "packet-queue-size": KEA_MT_QUEUE}}


class Dnsmasq(Server):
    def command(self):
        d = self.workdir
        cmd = [
            self.args.dnsmasq_bin, "--no-daemon", "--conf-file=/dev/null", "--port=0",
            f"--interface={self.topo.server_if}", "--bind-interfaces",
            f"--dhcp-range={POOL[0]},{POOL[1]},255.255.0.0,{LEASE_SECS}",
            f"--dhcp-leasefile={d / 'dnsmasq.leases'}",
            "--dhcp-lease-max=20000",  # default is 1000 leases
            "--no-ping",  # default pings each new address before offering it (see README)
            f"--pid-file={d / 'dnsmasq.pid'}",
            "--user=root",  # the work dir is 0700; don't drop to nobody
            f"--log-facility={d / 'dnsmasq.log'}",
        ]
        if not self.args.verbose_servers:
            cmd.append("--quiet-dhcp")
        return cmd, {}

    def leases_in_store(self):
        f = self.workdir / "dnsmasq.leases"
        if not f.exists():
            return None
        with open(f) as fh:
            return sum(1 for line in fh if line.strip())

    def version(self):
        return run([self.args.dnsmasq_bin, "--version"], check=False).stdout.splitlines()[0].strip()


SERVER_CLASSES = {"ramboot": Ramboot, "ramboot-pg": RambootPg, "ramboot-pg-2": RambootPg, "kea": Kea, "kea-pg": KeaPg,
                  "kea-pg-mt": KeaPgMt, "dnsmasq": Dnsmasq}
NEEDS_POSTGRES = {"ramboot-pg", "ramboot-pg-2", "kea-pg", "kea-pg-mt"}
# How many servers a name stands for: they share one database and split the load.
SERVER_COUNT = {"ramboot-pg-2": 2}


def second_server_link(topo: Topology) -> tuple[str, str, str]:
    """A namespace for ramboot-pg-2's second server, joined to the client namespace
    by a veth pair of its own (deleted with the namespaces). The client side gets a
    host route to the second server, so each perfdhcp's relay traffic takes its own
    pair. Returns (namespace, its interface, the client's interface)."""
    ns, server_if, client_if = topo.server_ns[:-1] + "t", topo.server_if[:-1] + "t", topo.client_if[:-1] + "d"
    run(["ip", "netns", "add", ns])
    topo.created.append(ns)
    run(["ip", "link", "add", server_if, "netns", ns, "type", "veth", "peer", "name", client_if,
         "netns", topo.client_ns])
    for n, ifname, ip in ((ns, server_if, SECOND_SERVER_IP), (topo.client_ns, client_if, SECOND_CLIENT_IP)):
        run(["ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=False)
        run(["ip", "-n", n, "addr", "add", f"{ip}/{PREFIX}", "dev", ifname])
        run(["ip", "-n", n, "link", "set", "lo", "up"])
        run(["ip", "-n", n, "link", "set", ifname, "up"])
    run(["ip", "-n", topo.client_ns, "route", "add", f"{SECOND_SERVER_IP}/32", "dev", client_if])
    return ns, server_if, client_if


def generator_ip(server_index: int, generator: int) -> str:
    """The client address of a server's perfdhcp number `generator` (>= 1)."""
    return f"10.77.0.{16 + 16 * server_index + generator}"  # in SUBNET, clear of .1-.4


def share(total: int, parts: int, k: int) -> int:
    """Part k of `total` split into `parts` near-equal whole shares."""
    return total // parts + (1 if k < total % parts else 0)


def udp_rcvbuf_errors(ns: str) -> int:
    """The namespace's UDP `RcvbufErrors` (/proc/net/snmp): datagrams the kernel
    dropped because a socket's receive buffer was full."""
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"],
                         capture_output=True, text=True, check=True).stdout
    header, values = [line.split()[1:] for line in out.splitlines() if line.startswith("Udp:")][:2]
    return int(dict(zip(header, values))["RcvbufErrors"])


def merge_perfdhcp(reports: list[dict]) -> dict:
    """Several perfdhcp reports as one: counters summed, latency samples pooled."""
    if len(reports) == 1:
        return reports[0]
    out: dict[str, Any] = {"rate_line": None, "malformed": None, "exchanges": {}, "latencies_ms": {}}
    for r in reports:
        if r["rate_line"] is not None:
            out["rate_line"] = (out["rate_line"] or 0.0) + r["rate_line"]
        if r["malformed"] is not None:
            out["malformed"] = (out["malformed"] or 0) + r["malformed"]
        for name, ex in r["exchanges"].items():
            merged = out["exchanges"].setdefault(name, {})
            for k, v in ex.items():
                if k.endswith("_ms"):
                    continue  # per-report delays: the pooled samples give the real figures
                merged[k] = merged.get(k, 0) + v
        for name, vals in r["latencies_ms"].items():
            out["latencies_ms"].setdefault(name, []).extend(vals)
        if r.get("load_cpu_s") is not None:
            out["load_cpu_s"] = out.get("load_cpu_s", 0.0) + r["load_cpu_s"]
            out["load_max_lag_ms"] = max(out.get("load_max_lag_ms", 0.0), r["load_max_lag_ms"])
    return out


# --------------------------------------------------------------------------- perfdhcp


def parse_iso_duration(s: str) -> float:
    """boost to_iso_string of a duration: HHMMSS.ffffff (hours may have more digits)."""
    whole, _, frac = s.strip().partition(".")
    hh = int(whole[:-4] or 0)
    return hh * 3600 + int(whole[-4:-2]) * 60 + int(whole[-2:]) + (float("0." + frac) if frac else 0.0)


_KV = re.compile(r"^(sent packets|received packets|drops|orphans|rejected leases|non unique addresses|collected packets): (\d+)$")
_DELAY = re.compile(r"^(min|avg|max) delay: ([0-9.]+) ms$")
_STDDEV = re.compile(r"^std deviation: ([0-9.]+) ms$")
_RATE = re.compile(r"^Rate: ([0-9.eE+-]+)")
_TS = re.compile(r"^sent / received: (\S+) / (\S+)$")


def parse_perfdhcp(text: str) -> dict:
    """perfdhcp 2.2 final report (+ `-x t` timestamps) -> numbers."""
    out: dict[str, Any] = {"rate_line": None, "malformed": None, "exchanges": {}}
    lat: dict[str, list[float]] = {}
    section, kind = None, None
    for raw in text.splitlines():
        line = raw.strip()
        if m := re.match(r"^\*\*\*Statistics for: (.+)\*\*\*$", line):
            section, kind = m.group(1), "stats"
            out["exchanges"].setdefault(section, {})
            continue
        if m := re.match(r"^\*\*\*Timestamps for packets: (.+)\*\*\*$", line):
            section, kind = m.group(1), "ts"
            lat.setdefault(section, [])
            continue
        if line.startswith("***"):
            section, kind = None, None
        if m := _RATE.match(line):
            out["rate_line"] = float(m.group(1))
        elif line.startswith("Malformed packets:"):
            out["malformed"] = int(line.split(":")[1])
        elif kind == "stats":
            ex = out["exchanges"][section]
            if m := _KV.match(line):
                ex[m.group(1).replace(" ", "_")] = int(m.group(2))
            elif m := _DELAY.match(line):
                ex[f"{m.group(1)}_ms"] = float(m.group(2))
            elif m := _STDDEV.match(line):
                ex["stddev_ms"] = float(m.group(1))
        elif kind == "ts" and (m := _TS.match(line)):
            lat[section].append((parse_iso_duration(m.group(2)) - parse_iso_duration(m.group(1))) * 1000.0)
    out["latencies_ms"] = lat
    return out


def parse_dhcp_load(text: str) -> dict:
    """ramboot-dhcp-load's JSON report -> parse_perfdhcp's shape (+ its own CPU and lag)."""
    try:
        r = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"rate_line": None, "malformed": None, "exchanges": {}, "latencies_ms": {}}
    exchanges, latencies = {}, {}
    for name, key in (("DISCOVER-OFFER", "discover_offer"), ("REQUEST-ACK", "request_ack")):
        ex = r[key]
        exchanges[name] = {"sent_packets": ex["sent_packets"], "received_packets": ex["received_packets"],
                           "drops": ex["sent_packets"] - ex["received_packets"],
                           "orphans": r["orphans"] if name == "REQUEST-ACK" else 0}
        if ex.get("samples_ms"):
            latencies[name] = ex["samples_ms"]
    return {"rate_line": None, "malformed": r["malformed"], "exchanges": exchanges, "latencies_ms": latencies,
            "load_cpu_s": r["busy_s"], "load_max_lag_ms": r["max_lag_ms"]}


# --------------------------------------------------------------------------- the bench


@dataclass
class Bench:
    args: argparse.Namespace
    topo: Topology
    procs: Procs
    perfdhcp_version: str = ""
    pg: PrivatePostgres | None = None
    server_versions: dict = field(default_factory=dict)

    # ---- server lifecycle

    # ramboot-pg-2's second server: its namespace and interface, and the client
    # interface that relays to it (set up once per bench run).
    second: tuple[str, str, str] | None = None
    # Extra client addresses already added for --generators.
    generator_ips: set = field(default_factory=set)

    def targets(self, name: str) -> list[tuple[str, str]]:
        """(client interface, server address) for each server `name` stands for."""
        first = (self.topo.client_if, SERVER_IP)
        if SERVER_COUNT.get(name, 1) == 1:
            return [first]
        assert self.second is not None, "ramboot-pg-2 needs its second link"
        return [first, (self.second[2], SECOND_SERVER_IP)]

    def start_servers(self, name: str) -> list[Server]:
        """Start the server(s) `name` stands for, each ready before the next."""
        started: list[Server] = []
        try:
            for i in range(SERVER_COUNT.get(name, 1)):
                started.append(self.start_server(name, i, started[0] if started else None))
        except BaseException:
            for srv in reversed(started):
                self.stop_server(srv, keep=True)
            raise
        return started

    def start_server(self, name: str, index: int = 0, first: Server | None = None) -> Server:
        workdir = Path(tempfile.mkdtemp(prefix=f"rbb-{name}-", dir=self.args.workdir))
        srv = SERVER_CLASSES[name](name=name, workdir=workdir, topo=self.topo, args=self.args)
        srv.pg = self.pg
        ns = self.topo.server_ns
        if SERVER_COUNT.get(name, 1) > 1:
            assert isinstance(srv, RambootPg) and self.second is not None
            addresses = [SERVER_IP, SECOND_SERVER_IP]
            srv.address = addresses[index]
            peers = ", ".join(f'"http://{a}:18080"' for a in addresses if a != srv.address)
            srv.cluster_lines = f"cluster:\n  peers: [{peers}]\n"
            if index == 1:
                ns, srv.interface = self.second[0], self.second[1]
                assert isinstance(first, RambootPg)
                srv.shared_db = first.db_name()
        cmd, env = srv.command()
        srv.log_path = workdir / "server.out"
        with open(srv.log_path, "w") as logf:
            srv.proc = self.procs.start(ns_exec(ns, self.args.server_cpus, cmd, env),
                                        stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.wait_ready(srv, self.targets(name)[index])
        except BaseException as e:
            self.stop_server(srv, keep=isinstance(e, BenchError))  # keep its logs to debug
            raise
        return srv

    def wait_ready(self, srv: Server, target: tuple[str, str]) -> None:
        """Ready once it completes one full DORA for a probe client (at most 20 s)."""
        def probe() -> bool:
            p = self.perfdhcp(["-n", "1", "-b", f"mac={PROBE_MAC}", "-d", "0.5", "-W", "200000"], timeout=10,
                              target=self.generators([target])[0])
            return p is not None and \
                parse_perfdhcp(p)["exchanges"].get("REQUEST-ACK", {}).get("received_packets", 0) >= 1

        wait_until(srv.proc, srv.name, probe, "complete a probe DORA", lambda: self.log_tail(srv), 0.3)

    def stop_server(self, srv: Server, keep: bool = False) -> dict:
        info = stop_server_proc(self.procs, srv.proc, "exited_during_step", lambda: self.log_tail(srv))
        info["leases_in_store"] = srv.leases_in_store()
        srv.cleanup()
        if self.args.keep_workdirs or keep:
            log(f"  (kept {srv.workdir})")
        else:
            shutil.rmtree(srv.workdir, ignore_errors=True)
        return info

    @staticmethod
    def log_tail(srv: Server, n: int = 15) -> str:
        return log_tail([srv.log_path, srv.workdir / "kea.log", srv.workdir / "dnsmasq.log"], n)

    # ---- perfdhcp

    def generators(self, targets: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """(local address, server address) of each load generator a step runs:
        --generators per server. A generator acts as a relay and binds port 67 on its
        local address, so each one beyond a server's first gets an address of its own
        on that server's client interface (added once, deleted with the namespace)."""
        out = []
        for i, (client_if, server_ip) in enumerate(targets):
            out.append(({SERVER_IP: CLIENT_IP, SECOND_SERVER_IP: SECOND_CLIENT_IP}[server_ip], server_ip))
            for g in range(1, self.args.generators):
                ip = generator_ip(i, g)
                if ip not in self.generator_ips:
                    run(["ip", "-n", self.topo.client_ns, "addr", "add", f"{ip}/{PREFIX}", "dev", client_if])
                    self.generator_ips.add(ip)
                out.append((ip, server_ip))
        return out

    def perfdhcp(self, extra: list[str], timeout: float, target: tuple[str, str] | None = None) -> str | None:
        """Run perfdhcp in the client namespace; stdout, or None if it failed to run."""
        return self.perfdhcps([extra], timeout, [target or self.generators(self.targets("ramboot"))[0]])[0]

    def perfdhcps(self, extras: list[list[str]], timeout: float,
                  targets: list[tuple[str, str]]) -> list[str | None]:
        """One perfdhcp per target, at once; each one's stdout, or None if it failed."""
        return self.generate(extras, timeout, targets, "perfdhcp")

    def generate(self, extras: list[list[str]], timeout: float, targets: list[tuple[str, str]],
                 load: str | None = None) -> list[str | None]:
        """One load generator (--load, or `load`) per target, at once; each one's
        stdout, or None if it failed."""
        load = load or self.args.load
        started = []
        for extra, (local, server_ip) in zip(extras, targets):
            if load == "ramboot":
                argv = [str(self.args.dhcp_load_bin), "--local", local, "--server", server_ip] + extra
            else:
                argv = [self.args.perfdhcp_bin, "-4", "-l", local] + extra + [server_ip]
            cmd = ns_exec(self.topo.client_ns, self.args.client_cpus, argv)
            started.append(self.procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            stdin=subprocess.DEVNULL, text=True))
        deadline = time.monotonic() + timeout
        outs: list[str | None] = []
        for p in started:
            try:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.procs.stop(p, grace=2)
                out, err = p.communicate()
                log(f"  warning: the {load} load generator exceeded {timeout:.0f} s and was stopped")
            finally:
                if p.poll() is None:  # interrupted: end it now, by its PID
                    self.procs.stop(p, grace=2)
                self.procs.live.pop(p.pid, None)
            # perfdhcp's exit 3 = "some exchanges not completed": normal under load.
            if p.returncode not in (0, 3) and (not out or "***Statistics" not in out):
                log(f"  {load} load exit {p.returncode}: {(err or out).strip()[-400:]}")
                out = None
            outs.append(out)
        return outs

    def step(self, name: str, rate: int, run_idx: int, timestamps: bool) -> dict:
        """One fixed-rate step against a freshly started server with an empty store."""
        secs = self.args.step_seconds
        srvs = self.start_servers(name)
        targets = self.targets(name)
        n = len(targets)
        gens = self.generators(targets)
        extras = []
        for k in range(len(gens)):
            # Each generator its own clients (MAC base) and an equal share of the rate.
            clients, share_rate = share(self.args.clients, len(gens), k), max(1, share(rate, len(gens), k))
            if self.args.load == "ramboot":
                extra = ["--mac-base", str(0xa0 + k), "--clients", str(clients), "--rate", str(share_rate),
                         "--seconds", str(secs), "--exit-wait", str(self.args.exit_wait)]
                if timestamps:
                    extra.append("--samples")
            else:
                extra = ["-b", f"mac=02:{0xa0 + k:02x}:00:00:00:00", "-R", str(clients), "-r", str(share_rate),
                         "-p", str(secs), "-W", str(int(self.args.exit_wait * 1e6)), "-s", str(run_idx + 1)]
                if timestamps:
                    extra += ["-x", "t"]
            extras.append(extra)
        stops: list[dict] = []
        try:
            cpu0 = [cpu_seconds(srv.proc.pid) for srv in srvs]
            # Whose socket overflowed, if any: the server's or perfdhcp's.
            rcvbuf_ns = {"server": self.topo.server_ns, "perfdhcp": self.topo.client_ns}
            rcvbuf0 = {side: udp_rcvbuf_errors(ns) for side, ns in rcvbuf_ns.items()}
            pg0 = self.pg.cpu_seconds() if self.pg and name in NEEDS_POSTGRES else None
            t0 = time.monotonic()
            texts = self.generate(extras, secs + self.args.exit_wait + 60, gens)
            wall = time.monotonic() - t0
            try:
                cpu1 = [cpu_seconds(srv.proc.pid) for srv in srvs]
            except FileNotFoundError:
                cpu1 = None
            pg1 = self.pg.cpu_seconds() if pg0 is not None else None
            rcvbuf = {side: udp_rcvbuf_errors(ns) - rcvbuf0[side] for side, ns in rcvbuf_ns.items()}
        finally:
            for srv in reversed(srvs):  # the first server of a pair drops the database
                stops.append(self.stop_server(srv))
        stop_info = {
            "exited_during_step": any(i["exited_during_step"] for i in stops),
            "exit_code": next((i.get("exit_code") for i in stops if i["exited_during_step"]), None),
            "leases_in_store": next((i["leases_in_store"] for i in stops if i["leases_in_store"] is not None), None),
        }
        text = None if any(t is None for t in texts) else "\n".join(texts)
        parse = parse_dhcp_load if self.args.load == "ramboot" else parse_perfdhcp
        res = merge_perfdhcp([parse(t or "") for t in texts])
        do = res["exchanges"].get("DISCOVER-OFFER", {})
        ra = res["exchanges"].get("REQUEST-ACK", {})
        do_sent, do_rcvd = do.get("sent_packets", 0), do.get("received_packets", 0)
        ra_sent, ra_rcvd = ra.get("sent_packets", 0), ra.get("received_packets", 0)
        # Share of started exchanges that completed. REQUESTs perfdhcp never sent
        # because the OFFER came during the -W exit wait are not drops (hence the product).
        if do_sent and ra_sent:
            drop_pct = 100.0 * (1.0 - (do_rcvd / do_sent) * (ra_rcvd / ra_sent))
        else:
            drop_pct = 100.0
        completed_ps = ra_rcvd / secs
        lat = {}
        for ex_name, key in (("DISCOVER-OFFER", "do"), ("REQUEST-ACK", "ra")):
            vals = sorted(res["latencies_ms"].get(ex_name, []))
            ex = res["exchanges"].get(ex_name, {})
            lat[key] = {
                "p50_ms": percentile(vals, 50), "p99_ms": percentile(vals, 99), "samples": len(vals),
                "min_ms": ex.get("min_ms"), "avg_ms": ex.get("avg_ms"), "max_ms": ex.get("max_ms"),
            }
        cpu_s = sum(cpu1) - sum(cpu0) if cpu1 is not None else None
        pg_s = (pg1 - pg0) if (pg0 is not None and pg1 is not None) else None
        client_limited = do_sent < MIN_COMPLETION * rate * secs
        ok = (text is not None and ra_rcvd > 0 and not stop_info["exited_during_step"])
        passed = ok and drop_pct < DROP_LIMIT_PCT and completed_ps >= MIN_COMPLETION * rate
        return {
            "server": name, "run": run_idx + 1, "target_rate": rate, "seconds": secs, "wall_s": round(wall, 2),
            "discover_sent": do_sent, "offer_received": do_rcvd, "request_sent": ra_sent, "ack_received": ra_rcvd,
            "orphans": do.get("orphans", 0) + ra.get("orphans", 0), "malformed": res["malformed"],
            "perfdhcp_drops": {"do": do.get("drops"), "ra": ra.get("drops")},
            "perfdhcp_rate_line": res["rate_line"],
            # The load generator's busy time per completed exchange (it spins, so its
            # CPU time is its wall time) and how far it fell behind its schedule
            # (ramboot-dhcp-load reports both; perfdhcp neither).
            "load_cpu_us_per_exchange": (res["load_cpu_s"] * 1e6 / ra_rcvd)
            if (res.get("load_cpu_s") is not None and ra_rcvd) else None,
            "load_max_lag_ms": res.get("load_max_lag_ms"),
            "offered_per_s": do_sent / secs, "completed_per_s": completed_ps, "drop_pct": drop_pct,
            "latency": lat, "server_cpu_s": cpu_s,
            "cpu_us_per_exchange": (cpu_s * 1e6 / ra_rcvd) if (cpu_s is not None and ra_rcvd) else None,
            # What PostgreSQL itself spent (its backends and postmaster), for servers on it.
            "db_cpu_s": pg_s,
            "db_cpu_us_per_exchange": (pg_s * 1e6 / ra_rcvd) if (pg_s is not None and ra_rcvd) else None,
            "client_limited": client_limited, "answered": ra_rcvd > 0, "ok": ok, "passed": passed,
            # Datagrams dropped at a full socket receive buffer during the step, by side
            # (the second server of a pair, in its own namespace, is not counted).
            "rcvbuf_drops": rcvbuf,
            "servers": n, "generators": len(gens), **stop_info,
        }

    def describe(self, s: dict) -> str:
        ra = s["latency"]["ra"]
        lat = (f"ACK p50 {fmt(ra['p50_ms'], 2)} p99 {fmt(ra['p99_ms'], 2)} ms" if ra["samples"]
               else f"ACK avg {fmt(ra['avg_ms'], 2)} max {fmt(ra['max_ms'], 2)} ms")
        verdict = "pass" if s["passed"] else "FAIL"
        if not s["answered"]:
            verdict += " (no ACKs!)"
        if s["client_limited"]:
            verdict += " (perfdhcp could not offer the target rate)"
        if s.get("exited_during_step"):
            verdict += f" (server exited {s.get('exit_code')})"
        full = s.get("rcvbuf_drops") or {}
        if any(full.values()):
            verdict += " (full receive buffers: " + ", ".join(f"{k} {v}" for k, v in full.items()) + ")"
        return (f"offered {s['offered_per_s']:.0f}/s, completed {s['completed_per_s']:.0f}/s, "
                f"drops {s['drop_pct']:.2f} %, {lat}, cpu {fmt(s['cpu_us_per_exchange'], 1)} us/exch"
                + (f" (load generator busy {fmt(s['load_cpu_us_per_exchange'], 1)}, lag max {fmt(s['load_max_lag_ms'], 1)} ms)"
                   if s.get("load_cpu_us_per_exchange") is not None else "") + ", "
                f"{s['leases_in_store']} leases stored -> {verdict}")

    def run_step(self, name: str, rate: int, run_idx: int, label: str, timestamps: bool | None = None) -> dict:
        if timestamps is None:
            timestamps = rate * self.args.step_seconds <= self.args.timestamp_limit
        log(f"run {run_idx + 1}/{self.args.runs} {name}: {label} {rate}/s for {self.args.step_seconds} s ...")
        s = self.step(name, rate, run_idx, timestamps)
        s["label"] = label
        log(f"run {run_idx + 1}/{self.args.runs} {name}: {label} {rate}/s: {self.describe(s)}")
        return s

    def sweep(self, name: str, run_idx: int) -> dict:
        steps: list[dict] = []
        last_pass: dict | None = None
        first_fail: dict | None = None
        for rate in self.args.rates:
            s = self.run_step(name, rate, run_idx, "sweep")
            steps.append(s)
            if not s["answered"] and last_pass is None:
                raise BenchError(f"{name} sent no ACKs at {rate}/s: misconfigured or broken, not slow")
            if s["passed"]:
                last_pass = s
            else:
                first_fail = s
                break
        if self.args.bisect and first_fail is not None:
            lo = last_pass["target_rate"] if last_pass else 0
            mid = (lo + first_fail["target_rate"]) // 2
            if mid > lo and mid >= 10:
                s = self.run_step(name, mid, run_idx, "bisect")
                steps.append(s)
                if s["passed"]:
                    last_pass = s
        cpu_step = next((s for s in steps if s["target_rate"] == self.args.cpu_rate), None)
        if cpu_step is None:
            cpu_step = self.run_step(name, self.args.cpu_rate, run_idx, "cpu")
            steps.append(cpu_step)
        for rate in self.args.cpu_rates:  # CPU per exchange side by side, passed or not
            if not any(s["target_rate"] == rate for s in steps):
                steps.append(self.run_step(name, rate, run_idx, "cpu"))
        unl = self.run_step(name, self.args.unlimited_rate, run_idx, "unlimited",
                            timestamps=self.args.unlimited_timestamps)
        steps.append(unl)
        return {
            "server": name,
            "run": run_idx + 1,
            "sustained_rate": last_pass["completed_per_s"] if last_pass else 0.0,
            "sustained_target": last_pass["target_rate"] if last_pass else None,
            "lowest_tried": min(s["target_rate"] for s in steps if s["label"] in ("sweep", "bisect")),
            "first_failing_target": first_fail["target_rate"] if first_fail else None,
            "sweep_hit_max_rate": first_fail is None,
            "sustained_latency": last_pass["latency"] if last_pass else None,
            "fixed_rate": self.args.cpu_rate,
            "fixed_rate_passed": cpu_step["passed"],
            "fixed_rate_latency": cpu_step["latency"],
            "cpu_us_per_exchange": cpu_step["cpu_us_per_exchange"],
            "db_cpu_us_per_exchange": cpu_step["db_cpu_us_per_exchange"],
            "unlimited": {k: unl[k] for k in ("target_rate", "offered_per_s", "completed_per_s", "drop_pct",
                                              "latency", "cpu_us_per_exchange", "db_cpu_us_per_exchange",
                                              "answered")},
            "steps": steps,
            "cpu_at": {str(rate): next((s["cpu_us_per_exchange"] for s in steps if s["target_rate"] == rate), None)
                       for rate in self.args.cpu_rates},
            "passed_at": {str(rate): next((s["passed"] for s in steps if s["target_rate"] == rate), None)
                          for rate in self.args.cpu_rates},
        }


# --------------------------------------------------------------------------- summary


def dig(d: dict | None, *path: str) -> Any:
    for p in path:
        if d is None:
            return None
        d = d.get(p)
    return d


def summarize(results: list[dict], servers: list[str]) -> dict:
    summary: dict[str, Any] = {}
    for name in servers:
        rs, errors = split_by_server(results, name)
        summary[name] = {
            "runs_ok": len(rs),
            "errors": errors,
            "sustained_rate": med([r["sustained_rate"] for r in rs]),
            "sustained_target": med([r["sustained_target"] for r in rs]),
            "sweep_hit_max_rate": any(r["sweep_hit_max_rate"] for r in rs),
            "lowest_tried": min((r["lowest_tried"] for r in rs), default=None),
            "sustained_ack_p50_ms": med([dig(r, "sustained_latency", "ra", "p50_ms") for r in rs]),
            "sustained_ack_p99_ms": med([dig(r, "sustained_latency", "ra", "p99_ms") for r in rs]),
            "fixed_rate": rs[0]["fixed_rate"] if rs else None,
            "fixed_rate_passed_all": all(r["fixed_rate_passed"] for r in rs) if rs else None,
            "fixed_offer_p50_ms": med([dig(r, "fixed_rate_latency", "do", "p50_ms") for r in rs]),
            "fixed_offer_p99_ms": med([dig(r, "fixed_rate_latency", "do", "p99_ms") for r in rs]),
            "fixed_ack_p50_ms": med([dig(r, "fixed_rate_latency", "ra", "p50_ms") for r in rs]),
            "fixed_ack_p99_ms": med([dig(r, "fixed_rate_latency", "ra", "p99_ms") for r in rs]),
            "cpu_us_per_exchange": med([r["cpu_us_per_exchange"] for r in rs]),
            "db_cpu_us_per_exchange": med([r.get("db_cpu_us_per_exchange") for r in rs]),
            "unlimited_offered_per_s": med([r["unlimited"]["offered_per_s"] for r in rs]),
            "unlimited_completed_per_s": med([r["unlimited"]["completed_per_s"] for r in rs]),
            "unlimited_drop_pct": med([r["unlimited"]["drop_pct"] for r in rs]),
            "cpu_us_per_exchange_at": {k: med([r["cpu_at"][k] for r in rs if r.get("cpu_at", {}).get(k) is not None])
                                       for k in (rs[0].get("cpu_at", {}) if rs else {})},
            "passed_all_at": {k: all(r["passed_at"][k] for r in rs) for k in (rs[0].get("passed_at", {}) if rs else {})},
        }
    rb = summary.get("ramboot", {}).get("sustained_rate")
    peers = {n: s["sustained_rate"] for n, s in summary.items() if not n.startswith("ramboot") and s["sustained_rate"]}
    if rb is not None and peers:
        best = max(peers, key=peers.get)
        summary["ratio_ramboot_to_best_peer"] = {"peer": best, "sustained_rate": rb / peers[best]}
    # Issue 13's target: ramboot on PostgreSQL against Kea on PostgreSQL (its best
    # configuration measured), same cluster.
    rb_pg = summary.get("ramboot-pg", {}).get("sustained_rate")
    kea_pg = max((summary.get(n, {}).get("sustained_rate") or 0 for n in ("kea-pg", "kea-pg-mt")), default=0)
    if rb_pg is not None and kea_pg:
        summary["ratio_ramboot_pg_to_kea_pg"] = {"sustained_rate": rb_pg / kea_pg}
    # ... and two ramboot servers on one database against one.
    rb_pg2 = summary.get("ramboot-pg-2", {}).get("sustained_rate")
    if rb_pg2 is not None and rb_pg:
        summary["ratio_ramboot_pg_2_to_ramboot_pg"] = {"sustained_rate": rb_pg2 / rb_pg}
    return summary


def table(summary: dict, servers: list[str], args: argparse.Namespace) -> str:
    fr = args.cpu_rate
    head = ["server", "sustained/s", "ACK p50/p99 ms", f"@{fr}/s OFFER p50/p99", f"@{fr}/s ACK p50/p99",
            f"CPU us/exch @{fr}/s", "DB us/exch", "unlimited done/s", "drop %"]
    rows = []
    for name in servers:
        s = summary[name]
        if not s["runs_ok"]:
            rows.append([name, "error"] + ["-"] * (len(head) - 2))
            continue
        sus = fmt(s["sustained_rate"])
        if s["sustained_rate"] == 0:
            sus = f"<{s['lowest_tried']}"
        elif s["sweep_hit_max_rate"]:
            sus += "+"
        fixed_mark = "" if s["fixed_rate_passed_all"] else " !"
        rows.append([
            name, sus,
            f"{fmt(s['sustained_ack_p50_ms'], 2)} / {fmt(s['sustained_ack_p99_ms'], 2)}",
            f"{fmt(s['fixed_offer_p50_ms'], 2)} / {fmt(s['fixed_offer_p99_ms'], 2)}{fixed_mark}",
            f"{fmt(s['fixed_ack_p50_ms'], 2)} / {fmt(s['fixed_ack_p99_ms'], 2)}{fixed_mark}",
            fmt(s["cpu_us_per_exchange"], 1),
            fmt(s["db_cpu_us_per_exchange"], 1),
            f"{fmt(s['unlimited_completed_per_s'])} (of {fmt(s['unlimited_offered_per_s'])})",
            fmt(s["unlimited_drop_pct"], 1),
        ])
    out = [
        f"DHCPv4 DORA via {'ramboot-dhcp-load' if args.load == 'ramboot' else 'perfdhcp'}: {args.clients} clients, {args.step_seconds} s steps, "
        f"pass = drops < {DROP_LIMIT_PCT:g} %, median of {args.runs} run(s)",
    ] + render_table(head, rows, left=1)
    ratio = summary.get("ratio_ramboot_to_best_peer")
    if ratio:
        if ratio["sustained_rate"] == 0:  # ramboot passed no step: bound it by its lowest
            bound = (summary["ramboot"]["lowest_tried"] or 0) / summary[ratio["peer"]]["sustained_rate"]
            out.append(f"ramboot / best peer ({ratio['peer']}) sustained rate: < {bound:.2f}x")
        else:
            out.append(f"ramboot / best peer ({ratio['peer']}) sustained rate: {ratio['sustained_rate']:.2f}x")
    for rate in args.cpu_rates:  # issue 18: CPU per exchange at fixed offered rates
        k = str(rate)
        cells = []
        for name in servers:
            v = summary[name].get("cpu_us_per_exchange_at", {}).get(k)
            if v is not None:
                mark = "" if summary[name]["passed_all_at"].get(k) else " (saturated: did not sustain it)"
                cells.append(f"{name} {fmt(v, 1)}{mark}")
        if cells:
            line = f"CPU us/exch at {rate}/s offered: " + ", ".join(cells)
            rb, kea = (summary.get(n, {}).get("cpu_us_per_exchange_at", {}).get(k) for n in ("ramboot", "kea"))
            if rb and kea:
                line += f"; ramboot / kea {rb / kea:.2f}"
            out.append(line)
    pg_ratio = summary.get("ratio_ramboot_pg_to_kea_pg")
    if pg_ratio:
        out.append(f"ramboot-pg / kea on PostgreSQL (its best of kea-pg, kea-pg-mt) sustained rate: "
                   f"{pg_ratio['sustained_rate']:.2f}x")
    pair_ratio = summary.get("ratio_ramboot_pg_2_to_ramboot_pg")
    if pair_ratio:
        out.append(f"ramboot-pg-2 (two servers, one database) / ramboot-pg sustained rate: "
                   f"{pair_ratio['sustained_rate']:.2f}x")
    out.append("sustained/s: completed exchanges/s at the highest passing step ('+': sweep never failed);"
               " latencies from perfdhcp -x t per-packet timestamps; DB us/exch: the private PostgreSQL"
               " cluster's own CPU (servers on PostgreSQL only; it is not pinned)")
    if any(not summary[n].get("fixed_rate_passed_all", True) for n in servers if summary[n]["runs_ok"]):
        out.append(f"'!': that server did not sustain {fr}/s, so its figures there are under overload")
    for name in servers:
        for e in summary[name]["errors"]:
            out.append(f"{name}: ERROR {e}")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="repetitions; the table shows medians")
    ap.add_argument("--step-seconds", type=int, default=10, help="perfdhcp -p per step")
    add_servers_arg(ap, ALL_SERVERS)
    add_ramboot_bin_arg(ap)
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)), help="sweep steps (exchanges/s)")
    ap.add_argument("--no-bisect", dest="bisect", action="store_false", help="skip the one bisection step")
    ap.add_argument("--cpu-rate", type=int, default=250, help="fixed rate for CPU/exchange and fixed-rate latency")
    ap.add_argument("--cpu-rates", default="8000,12000",
                    help="offered rates whose CPU per exchange the table compares (each server runs them, passing or not)")
    ap.add_argument("--unlimited-rate", type=int, default=100000, help="perfdhcp -r of the unlimited step")
    ap.add_argument("--unlimited-timestamps", action="store_true",
                    help="also collect per-packet timestamps in the unlimited step (perfdhcp memory!)")
    ap.add_argument("--timestamp-limit", type=int, default=0,
                    help="collect -x t timestamps only when rate*seconds is at most this many exchanges; "
                         "perfdhcp then keeps every packet (~6 KB each). 0: a quarter of MemAvailable")
    ap.add_argument("--clients", type=int, default=10000, help="perfdhcp -R")
    ap.add_argument("--load", choices=("ramboot", "perfdhcp"), default="ramboot",
                    help="the load generator: ramboot-dhcp-load (costs less CPU per exchange than the servers, so "
                         "it shows their ceiling on two cores) or perfdhcp (the reference; ~12,000/s on one core)")
    ap.add_argument("--dhcp-load-bin", type=Path, default=HERE.parent.parent / "target" / "release" / "ramboot-dhcp-load")
    ap.add_argument("--generators", type=int, default=1,
                    help="load generators per server, each with its own clients, address and share of the rate")
    ap.add_argument("--exit-wait", type=float, default=1.0, help="perfdhcp -W (seconds) after the period")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="don't pin the server to CPU 0 and perfdhcp to the other CPUs")
    ap.add_argument("--verbose-servers", action="store_true", help="per-lease logging in all servers (default: warnings only)")
    ap.add_argument("--workdir", default="/var/tmp", help="where per-step temp dirs (lease stores) go; use a real disk")
    ap.add_argument("--keep-workdirs", action="store_true")
    ap.add_argument("--perfdhcp-bin", default="/usr/sbin/perfdhcp")
    ap.add_argument("--kea-bin", default="/usr/sbin/kea-dhcp4")
    ap.add_argument("--dnsmasq-bin", default="/usr/sbin/dnsmasq")
    a = ap.parse_args()
    parse_servers(ap, a, ALL_SERVERS)
    a.rates = sorted({int(r) for r in a.rates.split(",")})
    a.cpu_rates = sorted({int(r) for r in a.cpu_rates.split(",") if r.strip()})
    if a.runs < 1 or a.step_seconds < 1 or a.generators < 1 or not a.rates or a.rates[0] < 1:
        ap.error("--runs, --step-seconds, --generators and --rates must be positive")
    if a.timestamp_limit <= 0:
        a.timestamp_limit = mem_available() // 4 // PERFDHCP_BYTES_PER_EXCHANGE
    ncpu = os.cpu_count() or 1
    if a.pin and ncpu >= 2:
        a.server_cpus, a.client_cpus = "0", f"1-{ncpu - 1}" if ncpu > 2 else "1"
    else:
        a.pin, a.server_cpus, a.client_cpus = False, None, None
    return a


def preflight(a: argparse.Namespace) -> None:
    need = common_needs(a, shutil.which("ip"), shutil.which("taskset"))
    need["perfdhcp"] = a.perfdhcp_bin  # the readiness probe, and --load perfdhcp
    if a.load == "ramboot":
        need["ramboot-dhcp-load"] = str(a.dhcp_load_bin)
    if {"kea", "kea-pg", "kea-pg-mt"} & set(a.servers):
        need["kea-dhcp4"] = a.kea_bin
    if NEEDS_POSTGRES & set(a.servers):
        why = PrivatePostgres.available()
        if why:
            raise BenchError(f"{', '.join(sorted(NEEDS_POSTGRES & set(a.servers)))} need(s) PostgreSQL 15: {why}")
        if {"kea-pg", "kea-pg-mt"} & set(a.servers) and not KEA_PG_SCHEMA.exists():
            raise BenchError(f"kea-pg needs Kea's schema {KEA_PG_SCHEMA} (apt-get install kea-admin)")
    if "dnsmasq" in a.servers:
        need["dnsmasq"] = a.dnsmasq_bin
    missing = [f"{k} ({v})" for k, v in need.items() if not v or not os.access(v, os.X_OK)]
    if missing:
        raise BenchError("missing: " + ", ".join(missing) +
                         " (ramboot, ramboot-dhcp-load: cargo build --release --workspace, or --ramboot-bin; the others: apt-get install kea-admin kea-dhcp4-server dnsmasq-base)")
    os.makedirs(a.workdir, exist_ok=True)


def main() -> int:
    args = parse_args()
    install_signal_handlers()
    try:
        preflight(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    topo, procs = Topology("rbb", SERVER_IP, CLIENT_IP, PREFIX), Procs()
    bench = Bench(args=args, topo=topo, procs=procs)
    results: list[dict] = []
    started = datetime.datetime.now(datetime.timezone.utc)

    def body() -> None:
        topo.up()
        log(f"{topo.describe()}; servers: {', '.join(args.servers)}; pinning: "
            f"{f'server cpu {args.server_cpus}, perfdhcp cpu {args.client_cpus}' if args.pin else 'off'}")
        bench.perfdhcp_version = run([args.perfdhcp_bin, "-v"], check=False).stdout.strip()
        if NEEDS_POSTGRES & set(args.servers):
            bench.pg = PrivatePostgres(args.workdir)
            bench.pg.start()
        if any(SERVER_COUNT.get(n, 1) > 1 for n in args.servers):
            bench.second = second_server_link(topo)
        for name in args.servers:
            srv_cls = SERVER_CLASSES[name]
            bench.server_versions[name] = srv_cls(name=name, workdir=Path("."), topo=topo, args=args).version()
        run_servers(args, results, bench.sweep)

    def cleanup() -> None:
        procs.stop_all()
        if bench.pg:
            bench.pg.stop()
        topo.down()

    interrupted = guarded(body, cleanup)

    summary = summarize(results, args.servers)
    doc = {
        "benchmark": "dhcp4-dora-perfdhcp",
        "started_utc": started.isoformat(timespec="seconds"),
        "complete": not interrupted,
        "host": host_info(),
        "versions": {"perfdhcp": bench.perfdhcp_version, **bench.server_versions},
        "settings": {
            "runs": args.runs, "step_seconds": args.step_seconds, "clients": args.clients,
            "load": args.load, "generators_per_server": args.generators,
            "rates": args.rates, "bisect": args.bisect, "cpu_rate": args.cpu_rate, "cpu_rates": args.cpu_rates,
            "unlimited_rate": args.unlimited_rate, "exit_wait_s": args.exit_wait,
            "timestamp_limit_exchanges": args.timestamp_limit,
            "pinning": {"server": args.server_cpus, "perfdhcp": args.client_cpus},
            "pool": list(POOL), "lease_secs": LEASE_SECS, "drop_limit_pct": DROP_LIMIT_PCT,
            "verbose_servers": args.verbose_servers, "workdir": args.workdir,
            "ramboot_bin": str(args.ramboot_bin),
        },
        "summary": summary,
        "runs": results,
    }
    write_results(args.out, doc)
    if results:
        print(table(summary, args.servers, args))
    log(f"JSON: {args.out}")
    return 130 if interrupted else (1 if any("error" in r for r in results) else 0)


if __name__ == "__main__":
    sys.exit(main())
