"""The landing layout's one home (shared/location.py): paths, data files, nested drops, the simulator's layout."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from devtools.simulate import FolderWriter, sample_layout_root
from shared import location as layout
from shared.cleanup import BlobEntry, nested_drop_roots, plan_deletion
from shared.sources import FolderDropSource
from shared.sources import data_file_names as listed_data_files  # the public name kept in sources

TENANT = "0b4f0d4e-5b7c-4f7e-9d2a-1c2b3d4e5f60"


@pytest.mark.parametrize("root", ["", "run/VivaInsights/" + TENANT, TENANT, "a/b/c"])
def test_a_drop_root_and_its_metadata_path_round_trip(root: str) -> None:
    path = layout.metadata_path_of(root)
    assert layout.is_metadata_blob(path)
    assert layout.drop_root_of(path) == root
    assert layout.location_from_blob("acct", "datasets", path) == layout.DropLocation(
        "acct", "datasets", root, metadata_name=path
    )
    assert layout.drop_root_named_by(path) == root
    assert layout.drop_root_named_by(f"/{root}/") == root


def test_a_name_that_is_no_metadata_file_has_no_drop_root() -> None:
    with pytest.raises(ValueError, match="not a drop's"):
        layout.drop_root_of("run/VivaInsights/data.json")
    assert layout.drop_root_named_by("run/VivaInsights") == "run/VivaInsights"


def test_the_metadata_suffix_is_matched_in_any_case() -> None:
    assert layout.drop_root_of("r/METADATA/jobmetadata/metadata.JSON") == "r"
    assert layout.is_metadata_file("Metadata/x") and not layout.is_metadata_file("data/metadata")


def test_the_sample_layout_names_the_run_and_the_tenant() -> None:
    root = layout.sample_drop_root("run-7", TENANT)
    where = layout.DropLocation("acct", "datasets", root)
    assert (where.run_id, where.tenant_from_location) == ("run-7", TENANT)
    assert sample_layout_root(TENANT, "run-7") == (root, "run-7")
    directory = layout.DropLocation("acct", "datasets", layout.sample_drop_root("run-7", TENANT, "AADUser"))
    assert directory.tenant_from_location == TENANT


_LISTING = [
    "metadata/JobMetadata/Metadata.json",
    "metadata/extra.txt",
    "part-10.json",
    "part-2.json",
    "sub/part-1.json",
    "inner/metadata/JobMetadata/Metadata.json",
    "inner/part-1.json",
]


def test_the_source_listing_and_cleanup_agree_on_what_belongs_to_a_drop() -> None:
    assert layout.nested_drop_roots(_LISTING) == ["inner"]
    assert layout.data_file_names(_LISTING) == ["part-2.json", "part-10.json", "sub/part-1.json"]
    assert listed_data_files is layout.data_file_names
    # cleanup groups a listing (full blob names) below the drop root the same way
    root = "run/VivaInsights/" + TENANT
    old = datetime(2020, 1, 1, tzinfo=UTC)
    blobs = [BlobEntry(f"{root}/{n}", 10, old, "e") for n in _LISTING]
    assert nested_drop_roots(blobs, root) == [f"{root}/inner"]
    plan = plan_deletion(blobs, root, newer_than=datetime.now(UTC), newer_why="now", recorded=None)
    deleted = {b.name.removeprefix(root + "/") for b in plan.delete}
    kept = {k.name.removeprefix(root + "/") for k in plan.kept}
    assert deleted == {n for n in _LISTING if not n.startswith("inner/")}
    assert kept == {"inner/metadata/JobMetadata/Metadata.json", "inner/part-1.json"}


def test_the_simulator_writes_where_the_layout_says(tmp_path: Path) -> None:
    writer = FolderWriter(tmp_path)
    written = writer.write_metadata(b'{"x": 1}')
    assert Path(written) == tmp_path / layout.metadata_path_of("")
    assert FolderDropSource(tmp_path).read_metadata() == b'{"x": 1}'  # the folder source reads that same path


def test_the_ingest_trigger_watches_the_layouts_metadata_blobs() -> None:
    from functions.ingest import INGEST_PATH

    assert INGEST_PATH == layout.TRIGGER_PATH
    assert INGEST_PATH.endswith("/" + layout.METADATA_SUFFIX)
    assert layout.TRIGGER_PATH.startswith("%LANDING_CONTAINER%/")
