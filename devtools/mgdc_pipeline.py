"""A Data Factory stand-in whose pipeline runs the way MGDC's copy does: it writes the tenant's drop.

:class:`MgdcPipelineStandIn` is the :class:`~devtools.datafactory_standin.DataFactoryStandIn` with a
worker behind ``createRun``: a started run is ``Queued``, then ``InProgress`` while it writes an
encrypted drop for the run's ``TenantId`` into the landing container, then ``Succeeded``, exactly
the sequence the follow timer sees in Azure. The drop is what Microsoft's sample pipeline writes:

* at ``<run id>/VivaInsights/<tenant id>/`` (the run id in its path, so the run ledger finds it);
* the file key wrapped with the tenant's *public* key, read from the local Key Vault through the
  real SDK (a tenant without a key fails the run with a message naming the missing key);
* the run's ``RequestStartDate``/``RequestEndDate`` in its Metadata.json;
* data blobs first, ``Metadata.json`` last (its arrival is the event the ingest function gets).

The simulator is imported here and nowhere else in devtools' local services, so moving it is a
one-line change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import ResourceExistsError
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.simulate import BlobWriter, sample_layout_root, simulate_drop

from .datafactory_standin import DataFactoryStandIn
from .tls import RecordedRequest, Reply

__all__ = ["MgdcPipelineStandIn", "PublicKeyLookup", "WindowedBlobWriter"]

log = logging.getLogger("viva_relay.devtools")

#: Returns a tenant's current public key and its version (the vault's key version).
PublicKeyLookup = Callable[[str], tuple[rsa.RSAPublicKey, str]]


def _day(value: Any) -> str:
    """A pipeline date parameter (``2026-11-17`` or a full timestamp) as Metadata.json writes it."""
    text = str(value or "").strip()
    return f"{text[:10]}T00:00:00Z" if text else ""


class WindowedBlobWriter(BlobWriter):
    """A blob writer that stamps the run's request window and factory into Metadata.json."""

    def __init__(self, container: Any, drop_root: str, overrides: dict[str, str]) -> None:
        super().__init__(container, drop_root)
        self.overrides = {k: v for k, v in overrides.items() if v}

    def write_metadata(self, body: bytes) -> str:
        """Write Metadata.json (last) with the run's own values."""
        doc = json.loads(body)
        doc.update(self.overrides)
        return super().write_metadata(json.dumps(doc, indent=2).encode("utf-8"))


class MgdcPipelineStandIn(DataFactoryStandIn):
    """Pipeline runs that really produce drops.

    :param landing: the landing container (a ``ContainerClient``) the pipeline copies into.
    :param public_key_of: the tenant's public key and version (the local Key Vault).
    :param rows: rows per drop.
    :param step_seconds: the longest a run stays ``Queued``, and ``InProgress`` after its copy, when no
        one reads it. A follower's ``GET`` of the run moves it on at once: each status is shown to the
        first read after it is set, so a follower sees every status without anyone waiting out a
        fixed time, however slow the machine.
    """

    def __init__(
        self,
        *,
        landing: Any,
        public_key_of: PublicKeyLookup,
        rows: int = 1000,
        step_seconds: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.landing = landing
        self.public_key_of = public_key_of
        self.rows = rows
        self.step_seconds = step_seconds
        self.workers: list[threading.Thread] = []
        self._read = threading.Condition(self._state_lock)  # notified on every GET of a run

    def _create_run(self, m: Any, request: RecordedRequest) -> Reply:
        reply = super()._create_run(m, request)
        if reply.status == 200 and isinstance(reply.body, dict):
            run_id = str(reply.body["runId"])
            worker = threading.Thread(target=self._execute, args=(run_id,), name=f"pipeline-{run_id}", daemon=True)
            self.workers.append(worker)
            worker.start()
        return reply

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until every started run has finished writing (for tests and the demo)."""
        deadline = time.monotonic() + timeout
        for worker in list(self.workers):
            worker.join(max(0.0, deadline - time.monotonic()))

    def _set(self, run_id: str, status: str, message: str = "") -> int:
        """Set the run's status; the number of reads of the run so far."""
        with self._state_lock:
            run = self.runs[run_id]
            run.set_status(status, message)
            return run.gets

    def _get_run(self, m: Any) -> Reply:
        reply = super()._get_run(m)
        with self._read:
            self._read.notify_all()
        return reply

    def _shown_after(self, run_id: str, reads: int) -> None:
        """Return once the run was read after its ``reads``-th read, or ``step_seconds`` passed."""
        deadline = time.monotonic() + self.step_seconds
        with self._read:
            while self.runs[run_id].gets <= reads and (left := deadline - time.monotonic()) > 0:
                self._read.wait(left)

    def _execute(self, run_id: str) -> None:
        """Queued → InProgress (copy the drop) → Succeeded, or Failed with the reason."""
        with self._state_lock:
            queued_reads = self.runs[run_id].gets
        self._shown_after(run_id, queued_reads)
        started_reads = self._set(run_id, "InProgress")
        with self._state_lock:
            run = self.runs[run_id]
            params = dict(run.parameters)
            factory = run.factory
        tenant = str(params.get("TenantId", "")).lower()
        try:
            public, version = self.public_key_of(tenant)
        except Exception as exc:
            message = (
                f"Operation on target CopyPersonReport failed: the public key '{tenant}' could not be read"
                f" from the Key Vault ({' '.join(str(exc).split())[:300]})"
            )
            self._set(run_id, "Failed", message)
            return
        root, _ = sample_layout_root(tenant, run_id)
        with contextlib.suppress(ResourceExistsError):
            self.landing.create_container()
        writer = WindowedBlobWriter(
            self.landing,
            root,
            {
                "RequestStartDate": _day(params.get("RequestStartDate")),
                "RequestEndDate": _day(params.get("RequestEndDate")),
                "DataFactoryName": factory,
            },
        )
        try:
            simulate_drop(writer, tenant_id=tenant, public_key=public, key_version=version, rows=self.rows)
        except Exception as exc:
            self._set(run_id, "Failed", f"Operation on target CopyPersonReport failed: {exc}")
            return
        # A real copy takes minutes: stay InProgress until a follower has seen it (or a step passed).
        self._shown_after(run_id, started_reads)
        log.info("pipeline run %s wrote its drop at %s", run_id, root)
        self._set(run_id, "Succeeded")
