"""One GUID rule for tenant ids, application ids and key names."""

from __future__ import annotations

import pytest

from shared.ids import GUID_RE, is_guid
from shared.keyfolder import KeyFolder
from shared.metadata import GUID_RE as METADATA_GUID_RE

TENANT = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


@pytest.mark.parametrize("text", [TENANT, TENANT.upper()])
def test_a_guid_is_a_guid(text: str) -> None:
    assert is_guid(text) and GUID_RE.match(text)


@pytest.mark.parametrize(
    "text", [TENANT + "\n", " " + TENANT, "{" + TENANT + "}", TENANT[:-1], TENANT + "0", TENANT.replace("-", "")]
)
def test_anything_else_is_not(text: str) -> None:
    assert not is_guid(text)
    assert not GUID_RE.match(text)  # also for callers of the older pattern


def test_the_old_import_path_is_the_same_rule() -> None:
    assert METADATA_GUID_RE is GUID_RE


def test_a_key_folder_refuses_a_tenant_id_with_a_trailing_newline(tmp_path) -> None:
    with pytest.raises(Exception, match="not a GUID"):
        KeyFolder(tmp_path).create(TENANT + "\n")
