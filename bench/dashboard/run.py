#!/usr/bin/env python3
"""The dashboard at fleet size: how long ramboot takes to render its pages, and how
long a real browser takes to first paint them, at 500 and 5,000 nodes.

For each fleet size: a fresh SQLite database is seeded with `ramboot-seed` (nodes
with labels, one boot each with its phases; some failed, in maintenance or still
booting), `ramboot serve` starts on loopback over it, and the bench logs in with the
admin token the server wrote. Then, per page:

- server: `--samples` sequential GETs over one keep-alive connection after a
  warm-up; wall time per page (median, p90) and the server's CPU time per page
  (utime+stime of its process over the samples / samples): the figure noise moves
  least. The client is one Python thread on the other core, so the server's CPU
  bounds the wall time, not the client.
- browser: Debian's headless Chromium over WebDriver (chromedriver) loads the page
  `--loads` times; first contentful paint and DOMContentLoaded from the page's own
  Performance API (navigation start = 0).

Each case is repeated `--runs` times (a fresh server each run); the tables show the
median of the runs' medians. No peer: no other netboot tool ships a dashboard that
renders from the same data (MAAS, Foreman and Ironic's UIs are separate services).

    cargo build --release -p ramboot -p ramboot-lab
    python3 bench/dashboard/run.py                    # 500 and 5,000 nodes, 3 runs
    python3 bench/dashboard/run.py --sizes 500 --runs 1 --out /tmp/dash.json

Needs `chromium` and `chromium-driver` (Debian). Progress on stderr, the tables on
stdout, every sample in --out (default bench/dashboard/results.json). Exit status:
0 good, 1 a measurement failed, 2 preflight failed.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "lib"))
from netlab import log_tail, wait_until  # noqa: E402
PAGES = [
    ("fleet", "/ui/"),
    ("nodes 100 rows", "/ui/nodes"),
    ("nodes 500 rows", "/ui/nodes?per=500"),
    ("nodes filtered", "/ui/nodes?state=ready&label=role%3Dcompute&q=52%3A54%3A00%3A00&sort=last_seen&dir=desc"),
    ("node page", "/ui/nodes/8"),
]


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(vals: list[float], p: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, max(0, int(round(p * len(s) + 0.5)) - 1))]


class Server:
    """`ramboot serve` on loopback over a seeded database."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.work = work
        self.port = free_port()
        data = work / "data"
        (work / "profiles").mkdir(parents=True, exist_ok=True)
        (work / "ipxe").mkdir(exist_ok=True)
        cfg = work / "ramboot.yaml"
        cfg.write_text(f"""interface: lo
server_address: 127.0.0.1
http: {{listen: "127.0.0.1:{self.port}"}}
tftp: {{listen: "127.0.0.1:{free_port()}"}}
dhcp: {{subnet: 127.0.0.0/8, range: [127.0.0.100, 127.0.0.200], port: {free_port()}}}
paths: {{data: {data}, profiles: {work}/profiles, ipxe: {work}/ipxe}}
""")
        self.log_path = work / "server.log"
        env = dict(os.environ, RUST_LOG="warn", NO_COLOR="1")
        self.proc = subprocess.Popen([str(args.ramboot_bin), "serve", "--config", str(cfg)],
                                     stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, env=env)
        wait_until(self.proc, "ramboot serve", self.answers, "listen", lambda: log_tail([self.log_path]), 0.2, 30)
        self.token = (data / "admin.token").read_text().strip()
        self.session = self.login()

    def answers(self) -> bool:
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            c.request("GET", "/metrics")
            return c.getresponse().status == 200
        except OSError:
            return False

    def login(self) -> str:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body = urllib.parse.urlencode({"token": self.token, "next": "/ui/"})
        c.request("POST", "/ui/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        r.read()
        cookie = next(v for k, v in r.getheaders() if k.lower() == "set-cookie" and v.startswith("ramboot_session="))
        return cookie.split(";", 1)[0].split("=", 1)[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_times(srv: Server, path: str, samples: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    headers = {"Cookie": f"ramboot_session={srv.session}"}

    def get() -> int:
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
        return len(body)

    for _ in range(3):
        size = get()
    walls = []
    cpu0 = cpu_seconds(srv.proc.pid)
    for _ in range(samples):
        t = time.perf_counter()
        get()
        walls.append((time.perf_counter() - t) * 1000)
    cpu = (cpu_seconds(srv.proc.pid) - cpu0) * 1000 / samples
    return {"wall_ms_median": statistics.median(walls), "wall_ms_p90": percentile(walls, 0.9),
            "cpu_ms_per_page": cpu, "bytes": size, "walls_ms": walls}


class Browser:
    """Headless Chromium over WebDriver, as tests/common/browser.rs drives it."""

    def __init__(self, driver: str):
        self.port = free_port()
        self.driver = subprocess.Popen([driver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        wait_until(self.driver, "chromedriver", self.ready, "start", lambda: "", 0.1, 15)
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,1000"]}}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def ready(self) -> bool:
        try:
            return bool(self.call("GET", "/status")["ready"])
        except OSError:
            return False

    def call(self, method: str, path: str, body: dict | None = None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        c.request(method, path, json.dumps(body) if body is not None else None,
                  {"Content-Type": "application/json"})
        answer = json.loads(c.getresponse().read())["value"]
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"WebDriver {path}: {answer['error']}: {answer.get('message', '')[:300]}")
        return answer

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def paint(self, url: str) -> dict:
        self.cmd("POST", "/url", {"url": url})
        # Paint entries land just after load; wait for them inside the page.
        return self.cmd("POST", "/execute/async", {"args": [], "script": """
            const done = arguments[arguments.length - 1];
            const read = () => {
              const fcp = performance.getEntriesByName('first-contentful-paint')[0];
              const nav = performance.getEntriesByType('navigation')[0];
              if (!fcp || !nav || nav.loadEventEnd === 0) return setTimeout(read, 20);
              done({fcp_ms: fcp.startTime, dcl_ms: nav.domContentLoadedEventEnd,
                    response_ms: nav.responseEnd, rows: document.querySelectorAll('#nodes tbody tr').length});
            };
            read();"""})

    def close(self) -> None:
        try:
            self.call("DELETE", f"/session/{self.session}")
        finally:
            self.driver.terminate()
            self.driver.wait(timeout=10)


def one_run(args: argparse.Namespace, size: int, run: int, db_template: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"ramboot-dash-{size}-"))
    try:
        (work / "data").mkdir()
        shutil.copy(db_template, work / "data" / "ramboot.db")
        srv = Server(args, work)
        result = {"size": size, "run": run, "pages": {}}
        try:
            for name, path in PAGES:
                result["pages"][name] = {"server": server_times(srv, path, args.samples)}
            result["rss_kib"] = rss_kib(srv.proc.pid)
            browser = Browser(args.chromedriver)
            try:
                base = f"http://127.0.0.1:{srv.port}"
                browser.cmd("POST", "/url", {"url": f"{base}/ui/login"})
                browser.cmd("POST", "/cookie", {"cookie": {"name": "ramboot_session", "value": srv.session,
                                                           "path": "/", "httpOnly": True}})
                for name, path in PAGES:
                    browser.paint(base + path)  # warm: assets cached, as for an operator
                    loads = [browser.paint(base + path) for _ in range(args.loads)]
                    result["pages"][name]["browser"] = {
                        "fcp_ms_median": statistics.median(x["fcp_ms"] for x in loads),
                        "dcl_ms_median": statistics.median(x["dcl_ms"] for x in loads),
                        "rows": loads[-1]["rows"], "loads": loads}
            finally:
                browser.close()
        finally:
            srv.stop()
        return result
    finally:
        if not args.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="500,5000", help="fleet sizes, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=30, help="server GETs per page per run")
    ap.add_argument("--loads", type=int, default=5, help="browser loads per page per run")
    ap.add_argument("--ramboot-bin", type=Path, default=ROOT / "target/release/ramboot")
    ap.add_argument("--seed-bin", type=Path, default=ROOT / "target/release/ramboot-seed")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/dashboard/results.json")
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args()
    missing = [str(p) for p in (args.ramboot_bin, args.seed_bin, Path(args.chromedriver), Path("/usr/bin/chromium"))
               if not p.exists()]
    if missing:
        print(f"missing: {', '.join(missing)} (cargo build --release -p ramboot -p ramboot-lab; "
              "apt-get install chromium chromium-driver)", file=sys.stderr)
        return 2
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        seeded = Path(tempfile.mkdtemp(prefix=f"ramboot-seed-{size}-"))
        try:
            log(f"seeding {size} nodes")
            t = time.monotonic()
            subprocess.run([str(args.seed_bin), "--database", f"sqlite://{seeded}/ramboot.db", "--nodes", str(size)],
                           check=True, stderr=subprocess.DEVNULL)
            log(f"seeded in {time.monotonic() - t:.1f} s")
            for run in range(1, args.runs + 1):
                log(f"{size} nodes, run {run}/{args.runs}")
                results.append(one_run(args, size, run, seeded / "ramboot.db"))
        finally:
            shutil.rmtree(seeded, ignore_errors=True)
    head = f"{'nodes':>6}  {'page':<15} {'server ms p50':>13} {'p90':>7} {'CPU ms/page':>11} {'KiB':>6} " \
           f"{'first paint ms':>14} {'DOMContentLoaded ms':>19}"
    print(head)
    summary = []
    for size in sorted({r["size"] for r in results}):
        runs = [r for r in results if r["size"] == size]
        for name, _ in PAGES:
            m = lambda f: statistics.median(f(r["pages"][name]) for r in runs)  # noqa: E731
            row = {"size": size, "page": name,
                   "server_ms_median": m(lambda p: p["server"]["wall_ms_median"]),
                   "server_ms_p90": m(lambda p: p["server"]["wall_ms_p90"]),
                   "cpu_ms_per_page": m(lambda p: p["server"]["cpu_ms_per_page"]),
                   "kib": m(lambda p: p["server"]["bytes"]) / 1024,
                   "fcp_ms": m(lambda p: p["browser"]["fcp_ms_median"]),
                   "dcl_ms": m(lambda p: p["browser"]["dcl_ms_median"])}
            summary.append(row)
            print(f"{size:>6}  {name:<15} {row['server_ms_median']:>13.1f} {row['server_ms_p90']:>7.1f} "
                  f"{row['cpu_ms_per_page']:>11.1f} {row['kib']:>6.0f} {row['fcp_ms']:>14.0f} {row['dcl_ms']:>19.0f}")
        print(f"{size:>6}  server RSS after the pages: {statistics.median(r['rss_kib'] for r in runs) / 1024:.1f} MiB")
    args.out.write_text(json.dumps({"summary": summary, "runs": results, "argv": sys.argv,
                                    "host": os.uname().nodename, "cpus": os.cpu_count()}, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
