"""A throwaway PostgreSQL cluster for one bench run (stdlib only).

initdb in a temp dir owned by the `postgres` OS user, listening on a unix socket
in that dir only (no TCP: network namespaces reach it through the file system),
`trust` authentication (nothing else can reach the socket dir), and the durable
defaults (fsync, synchronous_commit on) so a commit means what it means in
production. Every server of a run talks to this one cluster; each step gets a
fresh database. Its CPU (postmaster, backends, and the backends it has reaped) is
what `cpu_seconds` reports, so a step can say what PostgreSQL itself spent.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from netlab import BenchError, cpu_seconds, log, process_tree

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"


def as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", OS_USER, "--"] + cmd, capture_output=True, text=True, **kw)


class PrivatePostgres:
    def __init__(self, workdir: str, bindir: Path = PG_BIN):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="rbb-pg-", dir=workdir))
        self.data = self.root / "data"
        self.sockdir = self.root / "sock"
        self.pid: int | None = None

    @staticmethod
    def available(bindir: Path = PG_BIN) -> str | None:
        """Why this machine cannot run one, or None."""
        if not (bindir / "initdb").exists():
            return f"no {bindir}/initdb (apt-get install postgresql-15)"
        if shutil.which("runuser") is None:
            return "no runuser (util-linux)"
        try:
            import pwd
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"no OS user {OS_USER!r} (the postgresql package creates it)"
        return None

    def start(self) -> None:
        self.sockdir.mkdir()
        shutil.chown(self.root, OS_USER)
        shutil.chown(self.sockdir, OS_USER)
        p = as_postgres([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", OS_USER,
                         "--no-instructions"])
        if p.returncode != 0:
            raise BenchError(f"initdb failed: {p.stderr.strip()[-400:]}")
        opts = f"-k {self.sockdir} -c listen_addresses='' -c max_connections=100"
        p = as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts,
                         "-l", str(self.root / "postgres.log"), "-w", "-t", "60", "start"])
        if p.returncode != 0:
            raise BenchError(f"PostgreSQL did not start: {p.stderr.strip()[-400:]} "
                             f"(log: {self.root / 'postgres.log'})")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        version = self.psql("SHOW server_version").strip()
        log(f"PostgreSQL {version}: private cluster, socket {self.sockdir}")

    def psql(self, sql: str, db: str = "postgres", file: Path | None = None) -> str:
        cmd = [str(self.bindir / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
               "-h", str(self.sockdir), "-U", OS_USER, "-d", db]
        cmd += ["-f", str(file)] if file else ["-c", sql]
        p = as_postgres(cmd)
        if p.returncode != 0:
            raise BenchError(f"psql ({sql or file}): {p.stderr.strip()[-400:]}")
        return p.stdout

    def create_db(self, name: str) -> None:
        self.psql(f'CREATE DATABASE "{name}"')

    def drop_db(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def cpu_seconds(self) -> float | None:
        """CPU the whole cluster has used so far: the postmaster with the backends it
        reaped, plus the live ones."""
        if self.pid is None:
            return None
        try:
            total = cpu_seconds(self.pid, children=True)
        except OSError:
            return None
        for child in process_tree(self.pid)[1:]:
            try:
                total += cpu_seconds(child)
            except OSError:
                pass  # exited (and reaped into the postmaster's count) meanwhile
        return total

    def stop(self) -> None:
        if self.pid is not None:
            as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)
