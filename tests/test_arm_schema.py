"""ARM templates against Microsoft's published resource schemas (offline copy in infra/schemas/)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from devtools.arm_schema import SCHEMA_ROOT, template_errors, validate_template

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"


def templates() -> list[Path]:
    """Every deployment template under infra/ (parameter files and the schemas themselves excluded)."""
    found = []
    for path in sorted(INFRA.rglob("*.json")):
        if SCHEMA_ROOT in path.parents:
            continue
        schema = json.loads(path.read_text(encoding="utf-8")).get("$schema", "")
        if "deploymentTemplate.json" in schema:
            found.append(path)
    return found


def test_there_are_templates_to_check() -> None:
    names = {p.name for p in templates()}
    assert {"main.json", "eventgrid.json"} <= names


@pytest.mark.parametrize("path", templates(), ids=lambda p: p.name)
def test_template_matches_the_published_schemas(path: Path) -> None:
    validate_template(path)


def test_schema_copy_keeps_its_licence() -> None:
    licence = (SCHEMA_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in licence and "Microsoft" in licence


# -- the checker itself finds what it is for -----------------------------------------------------------


def storage_template(**account: Any) -> dict[str, Any]:
    resource = {
        "type": "Microsoft.Storage/storageAccounts",
        "apiVersion": "2023-05-01",
        "name": "[parameters('name')]",
        "location": "[resourceGroup().location]",
        "kind": "StorageV2",
        "sku": {"name": "Standard_LRS"},
        "properties": {"allowBlobPublicAccess": False, "minimumTlsVersion": "TLS1_2"},
    }
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {"name": {"type": "string"}},
        "resources": [resource | account],
    }


def test_a_valid_resource_passes() -> None:
    assert template_errors(storage_template()) == []


def test_a_misspelt_property_is_an_error() -> None:
    template = storage_template(properties={"allowBlobPublicAcess": False})
    [error] = template_errors(template)
    assert "unknown property 'allowBlobPublicAcess'" in error


def test_a_misspelt_resource_key_is_an_error() -> None:
    [error] = template_errors(storage_template(identiy={"type": "SystemAssigned"}))
    assert "unknown property 'identiy'" in error


def test_a_wrong_enum_value_and_a_wrong_type_are_errors() -> None:
    errors = template_errors(storage_template(kind="StorageV3", properties={"allowBlobPublicAccess": "no"}))
    assert any("'StorageV3' is not one of" in e for e in errors)
    assert any("allowBlobPublicAccess: expected boolean" in e for e in errors)


def test_types_and_enums_compare_case_insensitively() -> None:
    template = storage_template(
        type="microsoft.storage/STORAGEACCOUNTS", kind="storagev2", sku={"name": "standard_lrs"}
    )
    assert template_errors(template) == []


def test_expressions_are_allowed_for_any_value() -> None:
    template = storage_template(
        kind="[parameters('kind')]", sku="[variables('sku')]", properties={"allowBlobPublicAccess": "[true()]"}
    )
    assert template_errors(template) == []


def test_a_literal_starting_with_a_bracket_is_not_an_expression() -> None:
    [error] = template_errors(storage_template(kind="[[StorageV2]"))
    assert "is not one of" in error


def test_a_missing_required_property_is_an_error() -> None:
    template = storage_template(sku={})
    [error] = template_errors(template)
    assert "sku: missing required property 'name'" in error


def test_a_type_or_api_version_without_a_stored_schema_is_an_error() -> None:
    errors = template_errors(storage_template(apiVersion="2099-01-01"))
    assert len(errors) == 1 and "no schema for Microsoft.Storage/storageAccounts at 2099-01-01" in errors[0]


def test_nested_child_resources_are_checked_with_their_full_type() -> None:
    template = storage_template()
    template["resources"][0]["resources"] = [
        {"type": "blobServices", "apiVersion": "2023-05-01", "name": "default", "properties": {"bogus": 1}}
    ]
    [error] = template_errors(template)
    assert "Microsoft.Storage/storageAccounts/blobServices" in error and "unknown property 'bogus'" in error


def test_every_resource_of_the_real_template_is_checked() -> None:
    """A mistake slipped into main.json is found (the test above is not vacuous)."""
    template = json.loads((INFRA / "main.json").read_text(encoding="utf-8"))
    broken = copy.deepcopy(template)
    for resource in broken["resources"]:
        if resource["type"] == "Microsoft.KeyVault/vaults":
            resource["properties"]["enableRbacAuthorisation"] = True
    [error] = template_errors(broken)
    assert "Microsoft.KeyVault/vaults" in error and "enableRbacAuthorisation" in error
