"""The optional PostgreSQL server of the reference consumer in infra/main.json: off by default, Entra
sign-in only, and every resource valid against the Microsoft.DBforPostgreSQL 2025-08-01 schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.test_infra import MAIN, ROOT, app_settings, evaluated, load, one, render, resources_of

SCHEMA = ROOT.parent / "shared" / "arm-schemas" / "2025-08-01" / "Microsoft.DBforPostgreSQL.json"
EXPRESSION_REF = "https://schema.management.azure.com/schemas/common/definitions.json#/definitions/expression"
#: Keys of a template resource that the deployment template schema adds around every resource type.
TEMPLATE_KEYS = {"condition", "dependsOn", "comments", "copy", "scope"}


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return load(MAIN)


def consumer_resources(main: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in main["resources"] if r["type"].startswith("Microsoft.DBforPostgreSQL/")]


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("[") and value.endswith("]") and not value.startswith("[[")


class SchemaCheck:
    """The part of JSON Schema the ARM resource schemas use: $ref, oneOf, type, enum, pattern, required."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.errors: list[str] = []

    def resolve(self, node: dict[str, Any]) -> dict[str, Any] | None:
        ref = node.get("$ref")
        if ref is None:
            return node
        if ref == EXPRESSION_REF:
            return None  # an ARM expression: any "[...]" string
        assert ref.startswith("#/"), ref
        target: Any = self.schema
        for part in ref[2:].split("/"):
            target = target[part]
        return dict(target)

    def matches(self, node: dict[str, Any], value: Any, where: str) -> list[str]:
        resolved = self.resolve(node)
        if resolved is None:
            return [] if is_expression(value) else [f"{where}: {value!r} is not an expression"]
        if "oneOf" in resolved:
            options = [self.matches(option, value, where) for option in resolved["oneOf"]]
            if any(not errors for errors in options):
                return []
            return min(options, key=len)
        if is_expression(value):
            return []  # ARM evaluates it at deployment
        errors: list[str] = []
        kind = resolved.get("type")
        types = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list}
        if kind in types and not isinstance(value, types[kind]):
            return [f"{where}: {value!r} is not a {kind}"]
        if "enum" in resolved and value not in resolved["enum"]:
            errors.append(f"{where}: {value!r} not in {resolved['enum']}")
        if "pattern" in resolved and isinstance(value, str) and not re.match(resolved["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {resolved['pattern']}")
        if isinstance(value, dict):
            properties = resolved.get("properties", {})
            for key in resolved.get("required", []):
                if key not in value:
                    errors.append(f"{where}: {key} is required")
            for key, item in value.items():
                if key in properties:
                    errors += self.matches(properties[key], item, f"{where}.{key}")
                elif resolved.get("additionalProperties") is False or properties:
                    errors.append(f"{where}: {key} is not a property the schema knows")
        return errors

    def resource(self, resource: dict[str, Any]) -> list[str]:
        name = "_".join(resource["type"].split("/")[1:])
        definition = self.schema["resourceDefinitions"][name]
        body = {k: v for k, v in resource.items() if k not in TEMPLATE_KEYS}
        return self.matches(definition, body, resource["type"])


def test_consumer_database_is_off_by_default(main: dict[str, Any]) -> None:
    assert main["parameters"]["deployConsumerDatabase"] == {
        "type": "bool",
        "defaultValue": False,
        "metadata": main["parameters"]["deployConsumerDatabase"]["metadata"],
    }
    resources = consumer_resources(main)
    assert {r["type"] for r in resources} == {
        "Microsoft.DBforPostgreSQL/flexibleServers",
        "Microsoft.DBforPostgreSQL/flexibleServers/databases",
        "Microsoft.DBforPostgreSQL/flexibleServers/firewallRules",
        "Microsoft.DBforPostgreSQL/flexibleServers/administrators",
    }
    switch = "parameters('deployConsumerDatabase')"
    for resource in resources:
        # Each is deployed only with the switch on (the administrator also needs its object id).
        assert resource["condition"] in (
            f"[{switch}]",
            f"[and({switch}, not(empty(parameters('consumerDatabaseAdminObjectId'))))]",
        )


def test_consumer_server_signs_in_with_entra_only(main: dict[str, Any]) -> None:
    server = one(main, "Microsoft.DBforPostgreSQL/flexibleServers")
    auth = server["properties"]["authConfig"]
    assert auth["activeDirectoryAuth"] == "Enabled" and auth["passwordAuth"] == "Disabled"
    assert "administratorLoginPassword" not in server["properties"]
    # NULLS NOT DISTINCT in the published tables needs PostgreSQL 15 or later.
    assert all(int(v) >= 15 for v in main["parameters"]["consumerDatabaseVersion"]["allowedValues"])


def test_consumer_settings_follow_the_switch(main: dict[str, Any]) -> None:
    settings = app_settings(main)
    switch = "parameters('deployConsumerDatabase')"
    # Off: an empty CONSUMER_DATABASE_URL keeps consume_rows unregistered.
    assert settings["CONSUMER_DATABASE_URL"] == f"[if({switch}, variables('consumerDatabaseUrl'), '')]"
    assert settings["CONSUMER_DATABASE_ENTRA_AUTH"] == f"[if({switch}, 'true', 'false')]"
    url = render(evaluated(main, "[variables('consumerDatabaseUrl')]"))
    server = render(evaluated(main, one(main, "Microsoft.DBforPostgreSQL/flexibleServers")["name"]))
    app = render(evaluated(main, "[variables('functionAppName')]"))
    assert url == f"host={server}.postgres.database.azure.com port=5432 dbname=viva_relay user={app} sslmode=require"
    database = one(main, "Microsoft.DBforPostgreSQL/flexibleServers/databases")
    assert render(evaluated(main, database["name"])) == f"{server}/viva_relay"


@pytest.mark.skipif(not SCHEMA.exists(), reason="the ARM schemas are beside the repository (../shared)")
def test_consumer_resources_are_valid_against_the_2025_08_01_schema(main: dict[str, Any]) -> None:
    check = SchemaCheck(json.loads(SCHEMA.read_text(encoding="utf-8")))
    for resource in consumer_resources(main):
        assert resource["apiVersion"] == "2025-08-01"
        assert check.resource(resource) == [], resource["type"]


@pytest.mark.skipif(not SCHEMA.exists(), reason="the ARM schemas are beside the repository (../shared)")
def test_the_schema_check_catches_a_wrong_value(main: dict[str, Any]) -> None:
    check = SchemaCheck(json.loads(SCHEMA.read_text(encoding="utf-8")))
    server = json.loads(json.dumps(one(main, "Microsoft.DBforPostgreSQL/flexibleServers")))
    server["properties"]["authConfig"]["passwordAuth"] = "Maybe"
    server["properties"]["storag"] = {}
    errors = check.resource(server)
    assert any("passwordAuth" in e and "Maybe" in e for e in errors)
    assert any("storag" in e for e in errors)


def test_resources_of_lists_the_server_once(main: dict[str, Any]) -> None:
    assert len(resources_of(main, "Microsoft.DBforPostgreSQL/flexibleServers")) == 1
    assert Path(MAIN).name == "main.json"
