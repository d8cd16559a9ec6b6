"""Start and stop a throw-away PostgreSQL server on a free loopback port, for tests, the demo and the bench.

The server binaries come from the Debian ``postgresql`` package (``make postgres`` installs it). The
server refuses to run as root, so when this process is root the data folder is handed to an
unprivileged user (``nobody``) and the server runs as that user; otherwise it runs as the caller.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from devtools.azurite import free_port

#: The unprivileged account the server runs as when the caller is root.
SERVER_USER = "nobody"
DATABASE = "relay"
SUPERUSER = "relay"


def postgres_bin_dir() -> Path:
    """The folder with ``initdb`` and ``postgres`` (the newest installed Debian major version)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("PostgreSQL is not installed: run `make postgres` (make test and make demo do)")


class LocalPostgres:
    """A PostgreSQL server with its data in a temporary folder; a context manager."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bin = postgres_bin_dir()
        self._workdir = Path(tempfile.mkdtemp(prefix="postgres-"))
        self._data = self._workdir / "data"
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        """A libpq connection string (trust authentication on loopback only)."""
        return f"host=127.0.0.1 port={self.port} dbname={DATABASE} user={SUPERUSER}"

    def _run_as(self) -> list[str]:
        """The command prefix that drops root privileges (empty when not root)."""
        if not self._as_root:
            return []
        user = pwd.getpwnam(SERVER_USER)
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]

    def _hand_over(self) -> None:
        if self._as_root:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self._workdir, user.pw_uid, user.pw_gid)
        self._workdir.chmod(0o700)

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        """initdb, start the server and create the database; returns when it accepts connections."""
        self._hand_over()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "HOME": str(self._workdir)}
        subprocess.run(
            [
                *self._run_as(),
                str(self.bin / "initdb"),
                "-D",
                str(self._data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            env=env,
            cwd=self._workdir,
        )
        log = open(self._workdir / "server.log", "wb")  # noqa: SIM115 - lives as long as the process
        self._proc = subprocess.Popen(
            [
                *self._run_as(),
                str(self.bin / "postgres"),
                "-D",
                str(self._data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self._workdir),
                # A throw-away server: durability settings off make tests and the bench's COPY
                # baseline measure the consumer, not the disk of a shared machine.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_wal_size=2GB",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=self._workdir,
        )
        self._wait_ready(timeout)
        self._create_database()
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited: {self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                import psycopg

                with psycopg.connect(self.url.replace(f"dbname={DATABASE}", "dbname=postgres"), connect_timeout=2):
                    return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("PostgreSQL did not start in time") from None
                time.sleep(0.1)

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.url.replace(f"dbname={DATABASE}", "dbname=postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def new_database(self, name: str) -> str:
        """Create an empty database ``name`` (letters, digits, ``_``); returns its connection string."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url.replace(f"dbname={DATABASE}", f"dbname={name}")

    def log_text(self) -> str:
        """The server's log (for error messages)."""
        try:
            return (self._workdir / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGINT)
                self._proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        self._proc = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
