"""Blob trigger (Event Grid source): a drop's Metadata.json arrived; ingest the drop."""

from __future__ import annotations

import json
import logging

import azure.functions as func

from shared.config import LANDING_CONNECTION
from shared.ingest import ingest_metadata_blob
from shared.location import TRIGGER_PATH, split_trigger_path
from shared.runtime import get_runtime

bp = func.Blueprint()  # type: ignore[no-untyped-call]
log = logging.getLogger("viva_relay")

#: One trigger watches one container (the part before the first '/'; an app setting is allowed).
#: With source=EventGrid the host does not filter by this path: the Event Grid subscription filters
#: on the Metadata.json suffix and ``ingest_metadata_blob`` checks the name again.
INGEST_PATH = TRIGGER_PATH  # the landing layout decides it (shared.location)


@bp.function_name("ingest_drop")
@bp.blob_trigger(
    arg_name="metadata",
    path=INGEST_PATH,
    connection=LANDING_CONNECTION,
    source=func.BlobSource.EVENT_GRID,
)
def ingest_drop(metadata: func.InputStream) -> None:
    """Parse the trigger's blob path and hand the (small) Metadata.json to the ingest pipeline."""
    container, blob_name = split_trigger_path(metadata.name or "")
    outcome = ingest_metadata_blob(get_runtime(), container, blob_name, metadata.read())
    log.info("ingest %s", json.dumps(outcome.as_dict(), default=str))
