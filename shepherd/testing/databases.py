"""Real PostgreSQL and Redis servers from the distribution's packages, on loopback in a temp dir.

Tests and benchmarks start them; nothing is mocked. A missing binary is an error that says which
Debian package to install (the Makefile's test prerequisites install both), never a skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

from shepherd.testing.processes import free_ports, wait_until


class MissingServer(RuntimeError):
    """The server's binary is not installed."""


def _binary(name: str, package: str, extra: Sequence[str] = ()) -> str:
    found = shutil.which(name) or next(iter(sorted(p for pattern in extra for p in glob.glob(pattern))), None)
    if not found:
        raise MissingServer(f"{name} is not installed: apt-get install -y {package} (make test installs it)")
    return found


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class LoopbackServer:
    """A server process on `self.port` (loopback) with its files and log in `self.dir`;
    `stop()` ends it and removes the directory."""

    name = "server"
    dir: str
    port: int

    def _launch(self, argv: Sequence[str]) -> None:
        self._log = open(os.path.join(self.dir, f"{self.name}.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(list(argv), stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._up, 15, 0.05, f"{self.name} on port {self.port}")
        except AssertionError:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}: {self.output()}")
        return _accepts(self.port)

    def output(self) -> str:
        with open(os.path.join(self.dir, f"{self.name}.log"), encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(LoopbackServer):
    """`redis-server` on a free loopback port, no persistence, in a temp dir."""

    name = "redis-server"

    def __init__(self, port: int | None = None) -> None:
        binary = _binary("redis-server", "redis-server")
        self.dir = tempfile.mkdtemp(prefix="shepherd-redis-")
        self.port = port or free_ports(1)[0]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._launch([binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                      "--dir", self.dir, "--protected-mode", "yes"])


class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb + postgres) on a free loopback port, trust auth for
    loopback only. PostgreSQL refuses to run as root, so under root it runs as the `postgres` user."""

    def __init__(self) -> None:
        patterns = ["/usr/lib/postgresql/*/bin/{}"]
        self._initdb = _binary("initdb", "postgresql", [p.format("initdb") for p in patterns])
        self._postgres = os.path.join(os.path.dirname(self._initdb), "postgres")
        self.dir = tempfile.mkdtemp(prefix="shepherd-pg-")
        self.port = free_ports(1)[0]
        self.user = "postgres"
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        data = os.path.join(self.dir, "data")
        subprocess.run([*self._as_user, self._initdb, "-D", data, "-U", self.user, "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        self._logfile = os.path.join(self.dir, "postgres.log")
        log = open(self._logfile, "wb")  # noqa: SIM115
        if self._as_user:
            os.chown(self._logfile, *_ids("postgres"))
        self.proc = subprocess.Popen(
            [*self._as_user, self._postgres, "-D", data, "-h", "127.0.0.1", "-p", str(self.port), "-k", self.dir,
             "-c", "fsync=off", "-c", "max_connections=200"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_until(self._up, 30, 0.1, f"PostgreSQL on port {self.port}")
        except AssertionError:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"postgres exited with {self.proc.returncode}: {self.output()}")
        if not _accepts(self.port):
            return False
        return "ready to accept connections" in self.output()

    def output(self) -> str:
        with open(self._logfile, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def create_database(self, name: str) -> str:
        """A fresh database; its URL."""
        psql = os.path.join(os.path.dirname(self._initdb), "psql")
        psql = psql if os.path.exists(psql) else _binary("psql", "postgresql-client")
        subprocess.run([psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres", "-c",
                        f'CREATE DATABASE "{name}"'], check=True, capture_output=True, timeout=60)
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            # A fast shutdown: clients still connected (a gateway's pool) are cut off, not waited for.
            pg_ctl = os.path.join(os.path.dirname(self._initdb), "pg_ctl")
            subprocess.run([*self._as_user, pg_ctl, "stop", "-D", os.path.join(self.dir, "data"), "-m", "fast",
                            "-w", "-t", "20"], capture_output=True, timeout=30)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10
        while os.path.exists(os.path.join(self.dir, "data", "postmaster.pid")) and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
