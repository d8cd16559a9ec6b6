"""Start and stop Azurite (blob, queue, table) on free loopback ports, for tests and the demo."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def azurite_binary() -> Path:
    """The Azurite installed by ``npm ci`` from this project's package.json."""
    path = ROOT / "node_modules" / ".bin" / "azurite"
    if not path.exists():
        raise RuntimeError(f"Azurite is not installed: run `npm ci` in {ROOT} (make test does)")
    return path


class Azurite:
    """An Azurite process; a context manager.

    Storage is in memory unless ``location`` names a folder to keep it in (``make dev``). Telemetry
    is always off, and Azurite's own files go to its work folder, never the current directory.
    """

    def __init__(self, location: Path | None = None, ports: tuple[int, int, int] | None = None) -> None:
        self.blob_port, self.queue_port, self.table_port = ports or (free_port(), free_port(), free_port())
        self.location = location
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir = tempfile.mkdtemp(prefix="azurite-")

    @property
    def connection_string(self) -> str:
        """Connection string for all three services."""
        base = f"http://127.0.0.1:{{}}/{ACCOUNT}"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={base.format(self.blob_port)};"
            f"QueueEndpoint={base.format(self.queue_port)};"
            f"TableEndpoint={base.format(self.table_port)};"
        )

    def command(self) -> list[str]:
        """The Azurite command line (loopback only, telemetry off, data in memory or in ``location``)."""
        storage = ["--location", str(self.location)] if self.location else ["--inMemoryPersistence"]
        return [
            str(azurite_binary()),
            "--silent",
            "--loose",
            "--skipApiVersionCheck",
            *storage,
            "--disableTelemetry",
            "--blobHost",
            "127.0.0.1",
            "--queueHost",
            "127.0.0.1",
            "--tableHost",
            "127.0.0.1",
            "--blobPort",
            str(self.blob_port),
            "--queuePort",
            str(self.queue_port),
            "--tablePort",
            str(self.table_port),
        ]

    def wait_ready(self, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0) -> None:
        """Wait until every port accepts connections; RuntimeError when Azurite exits or is too slow."""
        deadline = time.monotonic() + timeout
        for port in (self.blob_port, self.queue_port, self.table_port):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"Azurite exited: {log_path.read_text()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("Azurite did not start in time") from None
                    time.sleep(0.1)

    def start(self, timeout: float = 30.0) -> Azurite:
        """Start Azurite and wait until every port accepts connections."""
        cmd = self.command()
        log = open(Path(self._workdir) / "azurite.log", "wb")  # noqa: SIM115 - lives as long as the process
        self._proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self._workdir
        )
        try:
            self.wait_ready(self._proc, Path(self._workdir) / "azurite.log", timeout)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop Azurite and remove its work folder."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc = None
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
