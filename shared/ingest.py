"""Ingest one drop: metadata, tenant check, ledger claim, key unwrap, stream rows to the sink.

:func:`stream_drop` is the one pipeline every door uses (the function, ``drop decrypt``, the
benchmark); :func:`ingest_drop` wraps it with the ledger (claim, checkpoints, delivered/failed) as a
:class:`DropAttempt` in named steps (validate, claim, unwrap, stream, settle), and
:func:`ingest_metadata_blob` is what the blob trigger calls.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any

from azure.core.exceptions import AzureError

from . import delivery, rowplan
from .bytepath import MAX_BLANK_BYTES, RowValidator, decode_rows
from .clock import utc_now
from .config import input_limits
from .contract import CheckingValidator, ContractCheck
from .errors import (
    BadRow,
    ConfigError,
    DataReplaced,
    DropError,
    ExtractionFailed,
    ImplausibleData,
    IntegrityError,
    LeaseLost,
    MetadataError,
    MetadataNotReady,
    NoDataFiles,
    RowCountMismatch,
    RowTooLarge,
    SchemaViolation,
    StoreRejected,
    TenantMismatch,
    TransientError,
    is_permanent_status,
)
from .keys import FileKey, KeyUnwrapper
from .ledger import DELETED, DELIVERED, IN_PROGRESS, DropRecord, new_owner_id
from .location import DropLocation, generation_of, is_metadata_blob, location_from_blob
from .manifest import changed_files, manifest_text, parse_manifest
from .messages import CONTRACT_VERSION, Envelope, failure_message
from .metadata import DropMetadata, parse_metadata
from .retry import with_retries
from .runtime import Runtime
from .sinks import RowSink
from .sources import BlobDropSource, DataFile, DropSource
from .status import Status
from .transforms import RowSettings, RowStage

log = logging.getLogger("viva_relay")

#: Attempts (event deliveries and re-checks, each with 3 quick tries) before a transient problem fails
#: the drop: about an hour with the default 5-minute re-check schedule.
MAX_ATTEMPTS = 12
#: The drop record's field set once the ``complete`` message was acknowledged (column CompleteSentAt):
#: it is never sent again, and no ``failed`` message ever follows it.
COMPLETE_SENT = "complete_sent_at"
#: The reason code the last-resort guard records for an exception nobody expected.
INTERNAL_ERROR = "internal_error"


@dataclass
class StreamStats:
    """What streaming one drop measured."""

    rows: int = 0
    data_files: int = 0
    ciphertext_bytes: int = 0
    plaintext_bytes: int = 0
    seconds: float = 0.0
    algorithm: str = ""
    key_version: str = ""
    schema: dict[str, Any] | None = None  # the contract check's report (None when it was off)

    @property
    def mb_per_s(self) -> float:
        """Uncompressed MB per second."""
        return self.plaintext_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass
class IngestOutcome:
    """The result of one ingest call, for logs, the demo and tests."""

    status: Status  # one of shared.status.Status: delivered, skipped, waiting, retrying, failed, error, ignored
    drop_id: str = ""
    tenant: str = ""
    reason: str = ""
    code: str = ""
    rows: int = 0
    messages: int = 0
    seconds: float = 0.0
    mb_per_s: float = 0.0
    algorithm: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for logs and JSON output)."""
        return asdict(self)


def check_tenant(location: DropLocation, metadata: DropMetadata, *, required: bool = True) -> None:
    """Refuse a drop whose TenantId is not the tenant its location names."""
    named = location.tenant_from_location
    if named is None:
        if required:
            raise TenantMismatch(
                f"the drop's location {location.url_path} names no tenant (expected a container named by"
                " the tenant id or .../VivaInsights/<tenant id>/)"
            )
        return
    if named != metadata.tenant_id:
        raise TenantMismatch(
            f"Metadata.json says TenantId {metadata.tenant_id} but the drop lies in the location of"
            f" tenant {named}; refusing to decrypt it with either tenant's key"
        )


def completion_summary(metadata: DropMetadata, location: DropLocation, stats: StreamStats) -> dict[str, Any]:
    """The fields of the completion message beyond the counts."""

    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "run_id": location.run_id or None,
        "extraction_result_id": metadata.extraction_result_id or None,
        "copy_activity_id": metadata.copy_activity_id or None,
        "rows_expected": metadata.rows_expected,
        "request_start": iso(metadata.request_start_date),
        "request_end": iso(metadata.request_end_date),
        "data_files": stats.data_files,
    }


def stream_drop(
    source: DropSource,
    metadata: DropMetadata,
    unwrapper: KeyUnwrapper,
    sink: RowSink,
    *,
    progress: Callable[[int], None] | None = None,
    file_key: FileKey | None = None,
    check: ContractCheck | None = None,
    stages: Sequence[RowStage] = (),
    files: list[DataFile] | None = None,
    max_blank_bytes: int = MAX_BLANK_BYTES,
) -> StreamStats:
    """Unwrap the key, stream every data file through the byte path into ``sink``, check the count.

    The completion (``sink.finish``) is only sent once every gzip stream ended with a valid CRC
    and the row count matches ``NumberOfRowsExtracted``. ``check`` observes every row (its report
    goes into the completion's ``schema`` section); ``stages`` transform rows before the sink.
    """
    started = time.perf_counter()
    if metadata.key is None:
        raise MetadataError("Metadata.json has no DecryptionKeyDetails")
    if file_key is None:
        file_key = unwrapper.unwrap(
            metadata.tenant_id, metadata.public_key_version, metadata.key.wrapped_key, metadata.key.iv
        )
    stats = StreamStats(algorithm=file_key.algorithm, key_version=file_key.key_version)
    if files is None:
        files = source.data_files_or_fail(metadata.rows_expected)
    stats.data_files = len(files)
    validator = RowValidator(max_blank_bytes) if check is None else CheckingValidator(check, max_blank_bytes, stages)
    expected = metadata.rows_expected
    for data_file in files:
        stats.ciphertext_bytes += data_file.size
        try:
            for rows in decode_rows(source.open_chunks(data_file), file_key.key, file_key.iv, validator=validator):
                if expected is not None and validator.rows > expected:
                    # Stop at the first row past the count: nothing beyond it is ever sent.
                    raise RowCountMismatch(f"the data holds more rows than NumberOfRowsExtracted ({expected})")
                stats.plaintext_bytes += sum(map(len, rows)) + len(rows)
                out = rows
                for stage in stages:
                    out = stage.process(out)
                sink.write(out)
                if progress is not None:
                    progress(validator.rows)
        except (IntegrityError, BadRow, RowTooLarge, ImplausibleData) as exc:
            # Name the file: with several part files the reason alone does not say which one is bad.
            raise type(exc)(f"data file {data_file.name}: {exc.reason}") from None
    stats.rows = validator.rows
    if expected is not None and expected != stats.rows:
        raise RowCountMismatch(f"the data holds {stats.rows} rows but NumberOfRowsExtracted is {expected}")
    summary = completion_summary(metadata, source.location, stats)
    if check is not None:
        stats.schema = schema_verdict(check, stages)
        summary["schema"] = stats.schema
    stats.seconds = time.perf_counter() - started
    sink.finish(summary)
    stats.seconds = time.perf_counter() - started
    return stats


def schema_verdict(check: ContractCheck, stages: Sequence[RowStage] = ()) -> dict[str, Any]:
    """The drop's schema report; SchemaViolation (before any completion) under SCHEMA_POLICY=fail."""
    check.extra_findings = [f for stage in stages for f in stage.findings()]
    report = check.report()
    if report["drift"] and check.policy == "fail":
        kinds = ", ".join(sorted({str(f["check"]) for f in report["findings"]}))
        raise SchemaViolation(f"the rows do not fit the contract of {check.table} ({kinds}); see SchemaReport", report)
    return report


def _metadata_columns(md: DropMetadata) -> dict[str, Any]:
    return {
        "table_name": md.table_name,
        "rows_expected": md.rows_expected if md.rows_expected is not None else -1,
        "extraction_result_id": md.extraction_result_id,
        "copy_activity_id": md.copy_activity_id,
        "public_key_version": md.public_key_version,
        "data_factory_name": md.data_factory_name,
        "office_geo": md.office_geo,
        "metadata_tenant_id": md.tenant_id,
    }


class _Checkpointer:
    """Heartbeats the ledger as the stream advances (progress and lease renewal).

    It also guards every put: once the lease may have expired without renewal (a stalled worker),
    no further message is sent, so a worker that took the drop over is the only one sending.
    """

    def __init__(self, rt: Runtime, record: DropRecord) -> None:
        self.rt = rt
        self.record = record
        self.sink: RowSink | None = None
        self.last_seq = record.checkpoint_seq
        # The runtime's clock, not a private one: a test moves it instead of sleeping out the lease.
        self.last_time = rt.clock()
        self._lease = timedelta(seconds=rt.settings.drop_lease_seconds)
        # Stop sending a little before the ledger's lease ends, to absorb clock skew between workers.
        self._margin = self._lease / 10
        self.valid_until = self.last_time + self._lease - self._margin

    def guard(self, _message: object) -> None:
        """Called before each queue put: refuse to send on a lease that may have been taken over."""
        if self.rt.clock() > self.valid_until:
            raise LeaseLost(f"the lease on drop {self.record.drop_id} was not renewed in time; stopping")

    def __call__(self, rows: int) -> None:
        s = self.rt.settings
        seq = self.sink.delivered_seq if self.sink is not None else -1
        due_seq = seq - self.last_seq >= s.checkpoint_every_messages
        due_time = self.rt.clock() - self.last_time > self._lease / 3
        if due_seq or due_time:
            renewed_at = self.rt.clock()
            delivered_rows = self.sink.delivered_rows if self.sink is not None else 0
            self.record = self.rt.ledger.heartbeat(self.record, seq, delivered_rows, s.drop_lease_seconds)
            self.valid_until = renewed_at + self._lease - self._margin
            self.last_seq = seq
            self.last_time = renewed_at


def _announce_failure(rt: Runtime, record: DropRecord, envelope: Envelope, exc: DropError) -> None:
    """Tell consumers that rows already sent for this drop are not to be used (best effort)."""
    fresh = rt.ledger.get(record.tenant, record.drop_id) or record
    encoding = fresh.encoding or ""
    if not encoding:
        return  # no attempt got as far as sending
    if fresh.complete_sent_at:
        return  # the drop is complete downstream: a failed message must never follow it
    try:
        queue = rt.queue_named(fresh.queue or rt.settings.downstream_queue)
        payload = failure_message(envelope, encoding, exc.code, exc.reason)
        queue.send_message(payload, time_to_live=rt.settings.message_ttl_seconds)
    except Exception:  # the ledger still records the failure; consumers also see no completion
        log.exception("drop %s: the failed message could not be sent", record.drop_id)


def _run_discriminator(md: DropMetadata) -> str:
    """What tells one run's drop from another's at the same root."""
    return (
        md.extraction_result_id
        or md.copy_activity_id
        or (md.job_submission_time.isoformat() if md.job_submission_time else "")
    )


def _same_run(record: DropRecord, md: DropMetadata) -> bool:
    recorded = record.extraction_result_id or record.copy_activity_id or ""
    current = md.extraction_result_id or md.copy_activity_id
    return not recorded or not current or recorded == current


def _fail(
    rt: Runtime,
    location: DropLocation,
    tenant: str,
    exc: DropError,
    record: DropRecord | None,
    details: dict[str, Any] | None = None,
) -> IngestOutcome:
    rt.ledger.mark_failed(location, tenant, exc.code, exc.reason, record=record, details=details)
    log.error("drop %s of tenant %s failed (%s): %s", location.drop_id, tenant, exc.code, exc.reason)
    return IngestOutcome(Status.FAILED, location.drop_id, tenant, exc.reason, exc.code)


def ingest_drop(
    rt: Runtime,
    source: DropSource,
    metadata_bytes: bytes | None = None,
    *,
    owner: str | None = None,
    sink_factory: Callable[[Envelope, int], RowSink] | None = None,
) -> IngestOutcome:
    """Ingest one drop into the downstream queue, recording every step in the ledger.

    Permanent problems end as a failed drop with the reason (and a normal return: no crash loop);
    transient ones give the lease back and return "retrying": the re-check timer resumes the drop.
    The steps are those of :class:`DropAttempt`.
    """
    return DropAttempt(rt, source, owner=owner, sink_factory=sink_factory).run(metadata_bytes)


@dataclass
class _Delivery:
    """What the unwrap and stream steps of one try need, prepared from the lease holder's ledger row."""

    files: list[DataFile]
    resume_from: int
    encoding: str
    sink: RowSink
    checkpointer: _Checkpointer
    plan: rowplan.RowPlan


class DropAttempt:
    """One ingest of one drop, in named steps: validate, claim, unwrap, stream, settle.

    * :meth:`validate` reads and checks Metadata.json (a settled drop is skipped, one not ready yet
      waits, a bad one fails);
    * :meth:`claim` takes the drop's lease in the ledger (skipped when another worker holds it; failed
      after MAX_ATTEMPTS);
    * then, retried up to three times (:meth:`try_once`): :meth:`prepare` the delivery from the ledger
      row (files, packing, sink), :meth:`unwrap` the file key, :meth:`stream` the rows into the sink and
      :meth:`settle` the drop as delivered;
    * whatever escaped the tries is settled by :meth:`settle_failure` (waiting, failed, retrying,
      skipped), so the function returns normally.
    """

    def __init__(
        self,
        rt: Runtime,
        source: DropSource,
        *,
        owner: str | None = None,
        sink_factory: Callable[[Envelope, int], RowSink] | None = None,
    ) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.source = source
        self.location = source.location
        self.tenant = self.location.tenant_from_location or "unknown"
        self.owner = owner
        self.sink_factory = sink_factory
        self.md: DropMetadata | None = None
        self.details: dict[str, Any] = {}
        self.row_settings: RowSettings | None = None
        self.record: DropRecord | None = None

    def run(self, metadata_bytes: bytes | None = None) -> IngestOutcome:
        """Every step in order; the first that ends the attempt gives the outcome."""
        outcome = self.validate(metadata_bytes) or self.claim()
        if outcome is not None:
            return outcome
        try:
            return with_retries(
                self.try_once, attempts=3, base_delay=self.rt.retry_delay_seconds, what=f"drop {self.location.drop_id}"
            )
        except Exception as exc:
            return self.settle_failure(exc)

    # -- validate ---------------------------------------------------------------------------------

    def validate(self, metadata_bytes: bytes | None) -> IngestOutcome | None:
        """Read and check Metadata.json; an outcome when the attempt ends here, else None."""
        rt, location, tenant = self.rt, self.location, self.tenant
        prior = rt.ledger.get(tenant, location.drop_id)
        settled = prior if prior is not None and prior.state in (DELIVERED, DELETED) else None
        # Read the blob itself even when the event carries its bytes: its ETag is what cleanup later
        # matches, and the version stored now is the one whose data files are read.
        raw = self.source.read_metadata()
        if not raw and metadata_bytes is not None:
            raw = metadata_bytes
        try:
            md = parse_metadata(raw)
            if prior is not None and not _same_run(prior, md):
                # Another run's drop landed at the root of a recorded one (settled, failed, or even being
                # delivered right now): a new drop, with its own id.
                location = replace(location, generation=generation_of(_run_discriminator(md)))
                self.location = self.source.location = location
                log.info("drop %s: a new run's drop at a reused root %s", location.drop_id, location.url_path)
            elif settled is not None:
                # A late duplicate event (Event Grid delivers at least once), possibly after cleanup.
                return IngestOutcome(Status.SKIPPED, location.drop_id, tenant, f"already {settled.state}")
        except (MetadataNotReady, MetadataError) as exc:
            if settled is not None:
                # Nothing new can be read there (a duplicate event after cleanup, say): the settled drop stands.
                return IngestOutcome(Status.SKIPPED, location.drop_id, tenant, f"already {settled.state}")
            if isinstance(exc, MetadataError):
                return _fail(rt, location, tenant, exc, None)
            record = rt.ledger.mark_waiting(location, tenant, str(exc))
            first = record.first_seen
            if first is not None and rt.clock() - first > timedelta(hours=self.settings.waiting_give_up_hours):
                return _fail(rt, location, tenant, MetadataError(f"Metadata.json never became valid: {exc}"), None)
            return IngestOutcome(Status.WAITING, location.drop_id, tenant, str(exc))
        if location.generation:
            again = rt.ledger.get(tenant, location.drop_id)
            if again is not None and again.state in (DELIVERED, DELETED):
                return IngestOutcome(Status.SKIPPED, location.drop_id, tenant, f"already {again.state}")
        self.md, self.details = md, _metadata_columns(md)
        try:
            check_tenant(location, md)
            if md.has_errors:
                raise ExtractionFailed("the extraction reported errors: " + " | ".join(md.errors))
        except DropError as exc:
            return _fail(rt, location, tenant, exc, None, self.details)
        return None

    # -- claim ------------------------------------------------------------------------------------

    def claim(self) -> IngestOutcome | None:
        """Take the drop's lease; an outcome when the attempt ends here, else None."""
        rt, location, tenant, md = self.rt, self.location, self.tenant, self._metadata()
        # Before the drop is touched: a missing pseudonymisation secret is a configuration error.
        self.row_settings = rowplan.settings_now(rt, md.table_name)
        self.owner = self.owner or new_owner_id()
        claim = rt.ledger.claim(location, tenant, self.owner, self.settings.drop_lease_seconds, details=self.details)
        if not claim.claimed:
            log.info("drop %s not processed: %s", location.drop_id, claim.why)
            return IngestOutcome(Status.SKIPPED, location.drop_id, tenant, claim.why)
        record = self.record = claim.record
        if record.attempts > MAX_ATTEMPTS and not record.complete_sent_at:
            last = record.last_error if record.last_error is not None else "unknown error"
            gave_up = DropError(f"gave up after {MAX_ATTEMPTS} attempts; last error: {last}")
            _announce_failure(rt, record, self._envelope(), gave_up)
            return _fail(rt, location, tenant, gave_up, record)
        return None

    # -- one try: prepare, unwrap, stream, settle -------------------------------------------------

    def try_once(self) -> IngestOutcome:
        """One try at delivering the claimed drop (with_retries runs it again after a transient error)."""
        fresh = self.rt.ledger.get(self.tenant, self.location.drop_id)
        if fresh is None or fresh.state != IN_PROGRESS or fresh.lease_owner != self.owner:
            raise LeaseLost(f"drop {self.location.drop_id} was taken over before this attempt started")
        if fresh.complete_sent_at:
            # An earlier attempt sent the completion but could not record the delivery: record it
            # now, without reading or sending anything again.
            self.record = fresh
            return _deliver_after_completion(self.rt, fresh)
        prepared = self.prepare(fresh)
        try:
            stats = self.stream(prepared, self.unwrap())
        finally:
            self.record = prepared.checkpointer.record
            prepared.sink.close()
        return self.settle(prepared, stats)

    def prepare(self, fresh: DropRecord) -> _Delivery:
        """List the data files, record how the drop is packed (reused on resume), renew the lease, build the sink."""
        rt, settings, location, md = self.rt, self.settings, self.location, self._metadata()
        resume_from = fresh.checkpoint_seq
        files = self.source.data_files_or_fail(md.rows_expected)
        read_before = parse_manifest(fresh.read_blobs)
        if read_before:
            changed = changed_files(read_before, files)
            if changed:
                raise DataReplaced(
                    f"data file(s) {', '.join(changed[:5])} changed since an earlier attempt read them"
                    " (another run wrote there); the rows already sent are not to be used"
                )
            manifest = str(fresh.read_blobs)
        else:
            manifest = manifest_text(location.metadata_path, self.source.metadata_etag, files)
        # A resumed drop must be packed exactly as before (same encoding, same queue), or skipping the
        # checkpointed messages would skip rows: what the first attempt used is recorded and reused.
        # (Recorded before the first put of the first attempt, so even messages sent before any
        # checkpoint are re-sent identically.)
        encoding = fresh.encoding or settings.message_encoding
        queue_name = fresh.queue or settings.downstream_queue
        assert self.row_settings is not None  # set by claim
        recorded = rowplan.recorded_or(fresh, self.row_settings)
        # Renew the lease now: the send guard below counts from this moment.
        fresh = rt.ledger.heartbeat(
            fresh,
            resume_from,
            fresh.checkpoint_rows,
            settings.drop_lease_seconds,
            extra={
                "encoding": encoding,
                "queue": queue_name,
                "packer_version": CONTRACT_VERSION,
                "row_settings": recorded.to_json(),
                "read_blobs": manifest or None,
            },
        )
        self.record = fresh
        envelope = self._envelope()
        checkpointer = _Checkpointer(rt, fresh)
        sink: RowSink
        if self.sink_factory is not None:
            sink = self.sink_factory(envelope, resume_from)
        else:
            sink = delivery.queue_sink(
                delivery.DEFAULT_PUT_PATH,
                rt.queue_named(queue_name),
                functools.partial(delivery.async_twin, rt.queue_named(queue_name), **rt.storage_kwargs),
                envelope,
                encoding,
                time_to_live=settings.message_ttl_seconds,
                concurrency=settings.put_concurrency,
                skip_through=resume_from,
                skip_rows=fresh.checkpoint_rows if resume_from >= 0 else None,
                before_put=checkpointer.guard,
            )
        checkpointer.sink = sink
        plan = rowplan.plan_for(rt, md, recorded)
        return _Delivery(files, resume_from, encoding, sink, checkpointer, plan)

    def unwrap(self) -> FileKey:
        """The drop's file key, unwrapped by the tenant's key (Key Vault or the key folder)."""
        md = self._metadata()
        if md.key is None:
            raise MetadataError("Metadata.json has no DecryptionKeyDetails")
        return self.rt.unwrapper.unwrap(md.tenant_id, md.public_key_version, md.key.wrapped_key, md.key.iv)

    def stream(self, run: _Delivery, file_key: FileKey) -> StreamStats:
        """Every row through the byte path into the sink, then the completion message."""
        limits = input_limits(self.settings.env)
        return stream_drop(
            self.source,
            self._metadata(),
            self.rt.unwrapper,
            run.sink,
            progress=run.checkpointer,
            file_key=file_key,
            check=run.plan.check,
            stages=run.plan.stages,
            files=run.files,
            max_blank_bytes=limits.max_blank_line_bytes,
        )

    def settle(self, run: _Delivery, stats: StreamStats) -> IngestOutcome:
        """Record the drop as delivered (the completion is out), and delete it when so configured."""
        rt, settings, location = self.rt, self.settings, self.location
        record = self._record()
        messages = run.sink.messages_sent
        final_seq = run.sink.delivered_seq
        # First a small write that says the completion is out, so that whatever happens to the
        # larger write below, no later attempt sends it again (or a failed message after it).
        record = self.record = rt.ledger.heartbeat(
            record, final_seq, stats.rows, settings.drop_lease_seconds, extra={COMPLETE_SENT: utc_now()}
        )
        record = self.record = rt.ledger.mark_delivered(
            record,
            {
                "rows": stats.rows,
                "messages": final_seq,  # rows messages; the completion message has seq = this
                "messages_put_this_attempt": messages,
                "checkpoint_seq": final_seq,
                "checkpoint_rows": stats.rows,
                "algorithm": stats.algorithm,
                "key_version": stats.key_version,
                "data_files": stats.data_files,
                "ciphertext_bytes": stats.ciphertext_bytes,
                "plaintext_bytes": stats.plaintext_bytes,
                "seconds": round(stats.seconds, 3),
                "mbps": round(stats.mb_per_s, 1),
                "encoding": run.encoding,
                "resumed_from_seq": run.resume_from,
            }
            | rowplan.schema_columns(stats.schema),
        )
        _delete_now(rt, record)
        log.info(
            "drop %s of tenant %s delivered: %d rows, %d messages, %.1f MB/s (%s)",
            location.drop_id,
            self.tenant,
            stats.rows,
            final_seq,
            stats.mb_per_s,
            stats.algorithm,
        )
        return IngestOutcome(
            Status.DELIVERED,
            location.drop_id,
            self.tenant,
            rows=stats.rows,
            messages=final_seq,
            seconds=stats.seconds,
            mb_per_s=stats.mb_per_s,
            algorithm=stats.algorithm,
        )

    # -- what escaped the tries -------------------------------------------------------------------

    def settle_failure(self, exc: Exception) -> IngestOutcome:
        """Settle an error that escaped every try: waiting, failed, retrying or skipped (never raised)."""
        rt, settings, location, tenant, record = self.rt, self.settings, self.location, self.tenant, self._record()
        if isinstance(exc, NoDataFiles):
            # Metadata.json may land before the data file has (a folder copy gives no order): wait for
            # it like for a Metadata.json that is not committed yet, and give up after the same window.
            first = record.first_seen
            if first is not None and rt.clock() - first > timedelta(hours=settings.waiting_give_up_hours):
                return _fail(rt, location, tenant, exc, record)
            rt.ledger.defer(record, exc.reason)
            log.warning("drop %s of tenant %s is waiting: %s", location.drop_id, tenant, exc.reason)
            return IngestOutcome(Status.WAITING, location.drop_id, tenant, exc.reason, exc.code)
        if isinstance(exc, DropError):
            _announce_failure(rt, record, self._envelope(), exc)
            report = exc.report if isinstance(exc, SchemaViolation) else None
            return _fail(rt, location, tenant, exc, record, rowplan.schema_columns(report) or None)
        if isinstance(exc, LeaseLost):
            log.warning("drop %s: %s", location.drop_id, exc)
            return IngestOutcome(Status.SKIPPED, location.drop_id, tenant, str(exc))
        if isinstance(exc, AzureError):
            # An SDK error no layer below classified (creating the queue while it is unreachable, say):
            # the HTTP status decides; without one it is a network problem, so transient.
            status = getattr(exc, "status_code", None)
            if is_permanent_status(status):
                refused = StoreRejected(f"storage refused a request: HTTP {status} ({type(exc).__name__})")
                _announce_failure(rt, record, self._envelope(), refused)
                return _fail(rt, location, tenant, refused, record)
            reason = f"storage unreachable: {type(exc).__name__}" + (f" (HTTP {status})" if status else "")
            rt.ledger.release(record, reason)
            log.error("drop %s of tenant %s: %s; it will be resumed by the re-check", location.drop_id, tenant, reason)
            return IngestOutcome(Status.RETRYING, location.drop_id, tenant, reason, "transient")
        if isinstance(exc, TransientError):
            # Give the lease back and return normally: the re-check timer resumes the drop from its
            # checkpoint a few minutes later, so an outage neither crash-loops the trigger nor burns the
            # retry budget in seconds.
            rt.ledger.release(record, str(exc))
            log.error("drop %s of tenant %s: %s; it will be resumed by the re-check", location.drop_id, tenant, exc)
            return IngestOutcome(Status.RETRYING, location.drop_id, tenant, str(exc), "transient")
        # Nobody expected this one. Record only a code and the exception's type (its message may
        # quote row values), give the lease back and return: the re-check tries again, and the
        # retry budget fails the drop if it keeps happening.
        what = f"{INTERNAL_ERROR}: unexpected {type(exc).__name__}"
        log.error("drop %s of tenant %s: %s; it will be retried by the re-check", location.drop_id, tenant, what)
        with contextlib.suppress(Exception):
            rt.ledger.release(record, what)
        return IngestOutcome(Status.RETRYING, location.drop_id, tenant, what, INTERNAL_ERROR)

    # -- helpers ----------------------------------------------------------------------------------

    def _metadata(self) -> DropMetadata:
        assert self.md is not None, "validate() comes first"
        return self.md

    def _record(self) -> DropRecord:
        assert self.record is not None, "claim() comes first"
        return self.record

    def _envelope(self) -> Envelope:
        return Envelope(tenant=self.tenant, drop=self.location.drop_id, table=self._metadata().table_name)


def _delete_now(rt: Runtime, record: DropRecord) -> None:
    """The immediate cleanup pass; best effort: the daily cleanup timer retries a failure."""
    if not rt.settings.delete_after_delivery:
        return
    try:
        from .cleanup import delete_drop

        delete_drop(rt, record)
    except Exception:
        log.exception("drop %s delivered, but deleting it failed; the daily cleanup retries", record.drop_id)


def _deliver_after_completion(rt: Runtime, record: DropRecord) -> IngestOutcome:
    """Record as delivered a drop whose ``complete`` message an earlier attempt sent."""
    rows = record.checkpoint_rows
    messages = record.checkpoint_seq
    record = rt.ledger.mark_delivered(record, {"rows": rows, "messages": messages, "messages_put_this_attempt": 0})
    _delete_now(rt, record)
    log.info("drop %s of tenant %s: completion sent earlier; now recorded as delivered", record.drop_id, record.tenant)
    return IngestOutcome(Status.DELIVERED, record.drop_id, record.tenant, rows=rows, messages=messages)


def ingest_metadata_blob(rt: Runtime, container: str, blob_name: str, metadata: bytes | None = None) -> IngestOutcome:
    """What the blob trigger calls for ``container/blob_name`` (any blob: non-drops are ignored)."""
    if container != rt.settings.landing_container:
        return IngestOutcome(Status.IGNORED, reason=f"container {container} is not {rt.settings.landing_container}")
    if not is_metadata_blob(blob_name):
        return IngestOutcome(Status.IGNORED, reason=f"{blob_name} is not a Metadata.json")
    location = location_from_blob(rt.landing_account, container, blob_name)
    try:
        source = BlobDropSource(rt.landing_container(container), location)
        return ingest_drop(rt, source, metadata)
    except Exception as exc:
        return _last_resort(rt, location, exc)


def _last_resort(rt: Runtime, location: DropLocation, exc: Exception) -> IngestOutcome:
    """Record an exception that escaped the ingest on the drop, and return normally.

    Returning (instead of raising) keeps the host from retrying the event and sending the blob to
    the poison queue with no reason anywhere. Only a code and the exception's type are recorded,
    never its message (which may quote row values). A transient failure leaves the drop waiting for
    the re-check; anything else fails it with that reason.
    """
    tenant = location.tenant_from_location or "unknown"
    if isinstance(exc, ConfigError):
        return _wait_for_configuration(rt, location, tenant, exc)
    if isinstance(exc, DropError):  # a store refused the drop's own record (StoreRejected, say)
        with contextlib.suppress(Exception):
            rt.ledger.mark_failed(location, tenant, exc.code, exc.reason)
        return IngestOutcome(Status.FAILED, location.drop_id, tenant, exc.reason, exc.code)
    transient = isinstance(exc, TransientError) or (
        isinstance(exc, AzureError) and not is_permanent_status(getattr(exc, "status_code", None))
    )
    code = "transient" if transient else INTERNAL_ERROR
    reason = f"{code}: unexpected {type(exc).__name__} while ingesting the drop"
    log.error("drop %s of tenant %s: %s", location.drop_id, tenant, reason)
    try:
        if transient:
            rt.ledger.mark_waiting(location, tenant, reason)
            return IngestOutcome(Status.WAITING, location.drop_id, tenant, reason, code)
        rt.ledger.mark_failed(location, tenant, code, reason)
    except Exception as again:  # the ledger itself is out of reach: the log line above is all there is
        log.error("drop %s: could not record %s (%s)", location.drop_id, code, type(again).__name__)
        return IngestOutcome(Status.ERROR, location.drop_id, tenant, reason, code)
    return IngestOutcome(Status.FAILED, location.drop_id, tenant, reason, code)


def _wait_for_configuration(rt: Runtime, location: DropLocation, tenant: str, exc: ConfigError) -> IngestOutcome:
    """A setting, not the drop, is wrong (a missing partner secret, say): keep the drop waiting, say why.

    The re-check timer tries it again, so it is delivered once the setting is fixed; failing it would
    blame the customer's data. A configuration message names settings, never row values.
    """
    reason = f"configuration: {exc}"
    log.error("drop %s of tenant %s waits: %s", location.drop_id, tenant, reason)
    try:
        rt.ledger.mark_waiting(location, tenant, reason)
    except Exception as again:  # the ledger itself is out of reach: the log line above is all there is
        log.error("drop %s: could not record the configuration error (%s)", location.drop_id, type(again).__name__)
        return IngestOutcome(Status.ERROR, location.drop_id, tenant, reason, "config")
    return IngestOutcome(Status.WAITING, location.drop_id, tenant, reason, "config")


def recheck_drops(rt: Runtime) -> list[IngestOutcome]:
    """Re-run waiting drops and drops whose attempt died (lease expired). One failure never stops the rest."""
    outcomes: list[IngestOutcome] = []
    now = rt.clock()
    candidates = list(rt.ledger.list(state="waiting"))
    candidates += [r for r in rt.ledger.list(state="in_progress") if not r.lease_active(now)]
    for record in candidates:
        loc = record.location
        try:
            outcomes.append(ingest_metadata_blob(rt, loc.container, loc.metadata_path))
        except Exception as exc:
            log.exception("re-check of drop %s failed", record.drop_id)
            outcomes.append(IngestOutcome(Status.ERROR, record.drop_id, record.tenant, str(exc)))
    return outcomes
