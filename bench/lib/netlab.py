"""Shared plumbing of the bench scripts: two network namespaces joined by a veth pair,
processes started and stopped by PID, /proc CPU accounting, ramboot's config, medians
and table formatting, and the signal-safe run/cleanup skeleton.

Python 3.11, stdlib only. The scripts import it by putting this folder on sys.path.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import ipaddress
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent.parent  # the ramboot checkout (bench/lib/..)
CLONE_NEWNET = 0x40000000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def run(cmd: list[str], timeout: float = 30, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Move this (single-threaded) process into the network namespace behind `fd`."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


# --------------------------------------------------------------------------- topology


def lab_network(subnet: str) -> tuple[str, str, str, int]:
    """`subnet` itself, the server's address in it (.1), the client's (.2) and the prefix length."""
    net = ipaddress.ip_network(subnet)
    return str(net), str(net[1]), str(net[2]), net.prefixlen


class Topology:
    """Two namespaces named after our PID (<tag><pid>s = server, <tag><pid>c = client),
    joined by a veth pair whose ends carry the same names.

    `enter_client` moves this (single-threaded) script into the client namespace, so
    what it spawns starts there directly; `down` moves it back first.
    """

    def __init__(self, tag: str, server_ip: str, client_ip: str, prefix: int) -> None:
        pid = os.getpid()
        self.server_ns = f"{tag}{pid}s"
        self.client_ns = f"{tag}{pid}c"
        self.server_if = f"{tag}{pid}s"  # veth end inside the server namespace
        self.client_if = f"{tag}{pid}c"  # veth end inside the client namespace
        self.server_ip, self.client_ip, self.prefix = server_ip, client_ip, prefix
        self.created: list[str] = []
        self.home_fd: int | None = None  # our original network namespace, once we left it

    def up(self) -> None:
        existing = run(["ip", "netns", "list"]).stdout.split()
        for ns in (self.server_ns, self.client_ns):
            if ns in existing:
                raise BenchError(f"network namespace {ns} already exists")
        for ns in (self.server_ns, self.client_ns):
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
        # Created directly inside the namespaces: nothing appears in the host's.
        run(["ip", "link", "add", self.server_if, "netns", self.server_ns, "type", "veth",
             "peer", "name", self.client_if, "netns", self.client_ns])
        for ns, ifname, ip in ((self.server_ns, self.server_if, self.server_ip),
                               (self.client_ns, self.client_if, self.client_ip)):
            run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=False)
            run(["ip", "-n", ns, "addr", "add", f"{ip}/{self.prefix}", "dev", ifname])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", ifname, "up"])

    def enter_client(self) -> None:
        self.home_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        fd = os.open(f"/run/netns/{self.client_ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
        finally:
            os.close(fd)

    def down(self) -> None:
        if self.home_fd is not None:
            try:
                setns(self.home_fd)
            except OSError as e:
                log(f"warning: could not return to the original network namespace: {e}")
            os.close(self.home_fd)
            self.home_fd = None
        for ns in reversed(self.created):
            p = run(["ip", "netns", "del", ns], check=False)
            if p.returncode != 0:
                log(f"warning: could not delete namespace {ns}: {p.stderr.strip()}")
        self.created.clear()

    def describe(self) -> str:
        return f"namespaces {self.server_ns} ({self.server_ip}) / {self.client_ns} ({self.client_ip})"


def ns_exec(ns: str, cpus: str | None, cmd: list[str], env: dict | None = None) -> list[str]:
    """`cmd` in namespace `ns`, pinned to `cpus` (taskset -c) if given, with `env` set via
    env(1). `ip netns exec`, taskset and env exec in place: the PID is the program's."""
    pre = ["ip", "netns", "exec", ns] + (["taskset", "-c", cpus] if cpus else [])
    if env:
        pre += ["env"] + [f"{k}={v}" for k, v in env.items()]
    return pre + cmd


# --------------------------------------------------------------------------- processes


class Procs:
    """Every process this script started, so cleanup ends exactly those, by PID.

    Servers (and other long-lived helpers) are Popen objects. Clients may be
    posix_spawn'ed and watched through pidfds (exact end times, rusage from wait4, and
    no PID-reuse race when killing).
    """

    def __init__(self) -> None:
        self.live: dict[int, subprocess.Popen] = {}
        self.clients: dict[int, int] = {}  # pid -> pidfd, until reaped

    def start(self, cmd: list[str], **kw: Any) -> subprocess.Popen:
        # Own session: a Ctrl-C reaches only this script, which then stops them in order.
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.live[p.pid] = p
        return p

    def stop(self, p: subprocess.Popen, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; only while it is still our child."""
        try:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        finally:
            self.live.pop(p.pid, None)
        return p.returncode

    def spawn_client(self, argv: list[str], log_path: Path) -> tuple[int, int]:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setsid=True)
        pidfd = os.pidfd_open(pid)
        self.clients[pid] = pidfd
        return pid, pidfd

    def reap_client(self, pid: int) -> tuple[int, Any]:
        _, status, rusage = os.wait4(pid, 0)
        pidfd = self.clients.pop(pid, None)
        if pidfd is not None:
            os.close(pidfd)
        return os.waitstatus_to_exitcode(status), rusage

    def kill_client(self, pid: int) -> None:
        pidfd = self.clients.get(pid)
        if pidfd is not None:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        for pid in list(self.clients):
            try:
                self.kill_client(pid)
                self.reap_client(pid)
            except Exception as e:  # keep cleaning up the rest
                log(f"warning: stopping client pid {pid}: {e}")
        for p in list(self.live.values()):
            try:
                self.stop(p, grace=3.0)
            except Exception as e:  # keep cleaning up the rest
                log(f"warning: stopping pid {p.pid}: {e}")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat; with
    `children`, plus its reaped children's (cutime + cstime). Raises OSError if gone."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14 to 17.
    return sum(int(fields[i]) for i in ((11, 12, 13, 14) if children else (11, 12))) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (from /proc/<pid>/task/*/children), parents first;
    [] if `pid` is gone."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 4096:
        p = todo.pop(0)
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        out.append(p)
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
    return out


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, ...) in bytes; {} if gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                v = v.split()
                if len(v) == 2 and v[1] == "kB" and v[0].isdigit():
                    out[k] = int(v[0]) * 1024
    except OSError:
        return {}
    return out


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 30


# --------------------------------------------------------------------------- servers


@dataclass
class BaseServer:
    """One server under test: `command` writes its config into `workdir` and returns
    its argv and extra environment."""

    name: str
    workdir: Path
    topo: Topology
    args: argparse.Namespace
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def version(self) -> str:
        return ""


def ramboot_command(args: argparse.Namespace, workdir: Path, subdirs: tuple[str, ...],
                    config: str) -> tuple[list[str], dict[str, str]]:
    """Create `subdirs` and write `config` as workdir/ramboot.yaml; the `ramboot serve`
    command and its env."""
    for sub in subdirs:
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    cfg = workdir / "ramboot.yaml"
    cfg.write_text(config)
    env = {"RUST_LOG": "info" if args.verbose_servers else "warn", "NO_COLOR": "1"}
    return [str(args.ramboot_bin), "serve", "--config", str(cfg)], env


def wait_until(proc: subprocess.Popen, name: str, probe: Callable[[], bool], what: str,
               tail: Callable[[], str], interval: float, limit: float = 20) -> None:
    """Poll `probe` until it returns True; BenchError if `proc` exits or `limit` s pass."""
    deadline = time.monotonic() + limit
    while True:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode} at start:\n{tail()}")
        if probe():
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{name} did not {what} within {limit:g} s:\n{tail()}")
        time.sleep(interval)


def stop_server_proc(procs: Procs, proc: subprocess.Popen | None, crash_key: str,
                     tail: Callable[[], str]) -> dict[str, Any]:
    """Stop a server; whether it had already exited (under `crash_key`), and if so how."""
    info: dict[str, Any] = {}
    if proc is not None:
        crashed = proc.poll() is not None
        rc = procs.stop(proc)
        info[crash_key] = crashed
        if crashed:
            info["exit_code"] = rc
            info["log_tail"] = tail()
    return info


def log_tail(paths: list[Path | None], n: int = 15) -> str:
    """The last `n` lines over the files that exist among `paths`."""
    lines: list[str] = []
    for path in paths:
        if path and path.exists():
            lines += path.read_text(errors="replace").splitlines()[-n:]
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------- numbers


def percentile(sorted_vals: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return None
    k = max(0, math.ceil(p / 100.0 * len(sorted_vals)) - 1)
    return sorted_vals[k]


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def med(vals: list) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def split_by_server(results: list[dict], name: str) -> tuple[list[dict], list[str]]:
    """A server's good runs and the errors of its failed ones."""
    rs = [r for r in results if r["server"] == name and "error" not in r]
    errors = [r["error"] for r in results if r["server"] == name and "error" in r]
    return rs, errors


def render_table(head: list[str], rows: list[list], left: int) -> list[str]:
    """Header, rule and rows; the first `left` columns left-aligned, the rest right."""
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]

    def line(r: list) -> str:
        return "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))

    return [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]


# --------------------------------------------------------------------------- main


def add_servers_arg(ap: argparse.ArgumentParser, all_servers: tuple[str, ...]) -> None:
    ap.add_argument("--servers", default=",".join(all_servers), help="comma-separated subset of " + ",".join(all_servers))


def add_ramboot_bin_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--ramboot-bin", type=Path,
                    default=Path(os.environ.get("RAMBOOT_BIN", REPO / "target" / "release" / "ramboot")))


def parse_servers(ap: argparse.ArgumentParser, a: argparse.Namespace, all_servers: tuple[str, ...]) -> None:
    a.servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    bad = [s for s in a.servers if s not in all_servers]
    if bad or not a.servers:
        ap.error(f"unknown server(s) {bad}; choose from {all_servers}")


def common_needs(a: argparse.Namespace, ip: str | None, taskset: str | None) -> dict[str, str | None]:
    """Root check, then the executables every bench needs: ip, taskset if pinning,
    ramboot if it is among the servers (what to write when `which` finds nothing is
    the caller's choice)."""
    if os.geteuid() != 0:
        raise BenchError("run as root (it creates network namespaces)")
    need = {"ip": ip}
    if a.pin:
        need["taskset"] = taskset
    if any(name.startswith("ramboot") for name in a.servers):
        need["ramboot"] = str(a.ramboot_bin)
    return need


def install_signal_handlers() -> None:
    """SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt, so `finally` blocks clean up.

    SIGINT explicitly too: a shell may start us with it ignored (background jobs)."""

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def run_servers(args: argparse.Namespace, results: list[dict], one: Callable[[str, int], dict]) -> None:
    """`one(name, run_idx)` for every run and server; a BenchError becomes an error row."""
    for run_idx in range(args.runs):
        # Alternate the order between runs so drift (thermal, page cache) is spread out.
        order = args.servers if run_idx % 2 == 0 else list(reversed(args.servers))
        for name in order:
            try:
                results.append(one(name, run_idx))
            except BenchError as e:
                log(f"run {run_idx + 1} {name}: ERROR {e}")
                results.append({"server": name, "run": run_idx + 1, "error": str(e)})


def guarded(body: Callable[[], None], cleanup: Callable[[], None]) -> bool:
    """Run `body`, then always `cleanup`; True if it was interrupted or failed outright."""
    interrupted = False
    try:
        body()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping what was started and removing the namespaces")
    except BenchError as e:
        log(f"error: {e}")
        interrupted = True
    finally:
        cleanup()
    return interrupted


def host_info() -> dict:
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()}


def write_results(out: Path, doc: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


# --------------------------------------------------------------------------- shared by the TFTP/HTTP/storm benches


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pin_server_and_clients(a: argparse.Namespace) -> None:
    """With `a.pin` and two CPUs or more: the server on CPU 0 (`a.server_cpus`, for
    taskset), clients and this script on the rest (`a.client_cpus`, a set for
    sched_setaffinity). Otherwise pinning is off and both are None."""
    ncpu = os.cpu_count() or 1
    if a.pin and ncpu >= 2:
        a.server_cpus, a.client_cpus = "0", set(range(1, ncpu))
    else:
        a.pin, a.server_cpus, a.client_cpus = False, None, None


def pinning_text(a: argparse.Namespace) -> str:
    return f"server cpu {a.server_cpus}, clients cpu {sorted(a.client_cpus)}" if a.pin else "off"


def cleanup_run(procs: Procs, topo: Topology, work: Path, keep: bool) -> None:
    """End what the run started, remove its namespaces, and its work directory unless kept."""
    procs.stop_all()
    topo.down()
    if keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def write_image_manifest(store: Path, name: str, kind: str, artifacts: dict[str, dict], inputs: dict) -> None:
    """A manifest as ramboot's image store keeps it (`src/images.rs` `Manifest`):
    `<store>/manifests/<name>.json`; each artifact is {digest, size, format} and its
    blob must be at `<store>/sha256/<digest>`."""
    (store / "manifests").mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "kind": kind, "built_at_ms": int(time.time() * 1000), "artifacts": artifacts,
           "inputs": inputs}
    (store / "manifests" / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
