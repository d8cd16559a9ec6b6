"""Check ARM templates against Microsoft's published resource schemas, offline (development only).

The schemas are Microsoft's own (``infra/schemas/<apiVersion>/<Provider>.json``, copied unchanged with their
MIT licence; see ``infra/schemas/README.md``). Each resource of a template is checked against the definition
whose ``type`` enum names the resource's type, in the folder of its ``apiVersion``. The checker follows what
Resource Manager accepts rather than the letter of JSON Schema:

* any value may be an ARM expression string (``"[...]"``; ``"[[...]"`` is a literal starting with ``[``);
* resource types and enum values compare case-insensitively;
* an object schema that lists ``properties`` and says nothing about ``additionalProperties`` is closed:
  an unknown property name is an error (a misspelt setting is silently ignored by Azure otherwise). Where a
  schema is a union (``oneOf``/``anyOf``, e.g. Data Factory linked services by ``type``), the names allowed are
  those of the branch the value matches; a schema that gives ``additionalProperties`` keeps it open.

Use :func:`validate_template` from tests (``tests/test_arm_schema.py`` runs it on every template under
``infra/``), or ``python -m devtools.arm_schema infra/*.json`` to see every problem at once.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_ROOT = Path(__file__).resolve().parent.parent / "infra" / "schemas"
COMMON_URL = "https://schema.management.azure.com/schemas/common/definitions.json"
#: The pattern of common/definitions.json#/definitions/expression (a union branch that only allows "[...]").
EXPRESSION_PATTERN = "^\\[([^\\[].*)?\\]$"

#: Keys every template resource may carry whatever its type (deploymentTemplate.json's resource base).
TEMPLATE_RESOURCE_KEYS = frozenset({"condition", "dependsOn", "copy", "comments", "metadata", "scope", "resources"})
#: Top-level keys of a deployment template.
TEMPLATE_KEYS = frozenset(
    {"$schema", "contentVersion", "apiProfile", "parameters", "variables", "functions", "resources", "outputs"}
    | {"metadata", "definitions"}
)
PARAMETER_TYPES = frozenset({"string", "securestring", "int", "bool", "object", "secureobject", "array"})
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


class SchemaMissing(LookupError):
    """No schema in ``infra/schemas`` for a resource's type and API version."""


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@dataclass(frozen=True)
class Node:
    """A schema object together with the document its local ``$ref``s resolve in."""

    schema: Mapping[str, Any]
    doc: str  # path of the schema file, relative to SCHEMA_ROOT


@cache
def _document(doc: str) -> dict[str, Any]:
    with (SCHEMA_ROOT / doc).open(encoding="utf-8") as handle:
        loaded: dict[str, Any] = json.load(handle)
    return loaded


def _resolve(node: Node) -> Node:
    """Follow ``$ref`` (local ``#/...`` or the common definitions URL) until a schema without one."""
    seen = 0
    if isinstance(node.schema, _Wrapped):
        node = Node(node.schema, node.schema.doc)
    while "$ref" in node.schema:
        seen += 1
        if seen > 50:
            raise ValueError(f"$ref loop in {node.doc}")
        url, _, pointer = str(node.schema["$ref"]).partition("#")
        if url == COMMON_URL:
            doc = "common/definitions.json"
        elif url:
            raise SchemaMissing(f"$ref to {url} is not available offline (copy it into {SCHEMA_ROOT})")
        else:
            doc = node.doc
        target: Any = _document(doc)
        for part in [p for p in pointer.split("/") if p]:
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = Node(target, doc)
    return node


def is_expression(value: Any) -> bool:
    """True for an ARM template expression string such as ``"[parameters('x')]"``."""
    return isinstance(value, str) and value.startswith("[") and value.endswith("]") and not value.startswith("[[")


def _type_errors(value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    declared = schema.get("type")
    if declared is None:
        return []
    names = declared if isinstance(declared, list) else [declared]
    for name in names:
        kinds = _JSON_TYPES.get(str(name), (object,))
        if isinstance(value, kinds) and not (isinstance(value, bool) and name in ("integer", "number")):
            return []
    return [f"{where}: expected {'/'.join(map(str, names))}, got {type(value).__name__} {value!r:.60}"]


def _scalar_errors(value: Any, schema: Mapping[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    if "enum" in schema:
        allowed = schema["enum"]
        folded = {a.lower() if isinstance(a, str) else a for a in allowed}
        probe = value.lower() if isinstance(value, str) else value
        if probe not in folded:
            errors.append(f"{where}: {value!r} is not one of {allowed}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < int(schema["minLength"]):
            errors.append(f"{where}: {value!r} is shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > int(schema["maxLength"]):
            errors.append(f"{where}: {value!r} is longer than {schema['maxLength']}")
        if "pattern" in schema and not _pattern(str(schema["pattern"])).search(value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above {schema['maximum']}")
    return errors


def errors_for(value: Any, node: Node, where: str = "$", *, strict: bool = True) -> list[str]:
    """Every way ``value`` breaks the schema ``node`` (empty when it fits).

    ``strict``: unknown property names are errors. It is turned off below a discriminated union (branches
    told apart by a ``type``-like tag, as in Data Factory), whose services accept properties that the
    published schema leaves out (e.g. the Office 365 dataset's ``dateFilterColumn``).
    """
    if is_expression(value):
        return []
    node = _resolve(node)
    schema = node.schema
    union = schema.get("oneOf") or schema.get("anyOf")
    if union:
        base = {k: v for k, v in schema.items() if k not in ("oneOf", "anyOf")}
        best: tuple[bool, bool, bool, int, list[str]] | None = None
        branches = [_merge([Node(base, node.doc), _resolve(Node(branch, node.doc))]) for branch in union]
        strict = strict and sum(1 for b in branches if _tags(b)) < 2
        for merged in branches:
            found = errors_for(value, merged, where, strict=strict)
            if not found:
                return []
            # Report the branch the value claims to be (its discriminator matches), else the closest one.
            wrong_type = bool(_type_errors(value, merged.schema, where))
            expression_only = merged.schema.get("pattern") == EXPRESSION_PATTERN
            rank = (not _discriminator_matches(value, merged), expression_only, wrong_type, len(found), found)
            if best is None or rank[:4] < best[:4]:
                best = rank
        return best[4] if best else [f"{where}: matches no alternative"]
    if "allOf" in schema:
        return errors_for(value, _merge([node]), where, strict=strict)
    found = _type_errors(value, schema, where)
    if found:
        return found
    found = _scalar_errors(value, schema, where)
    if isinstance(value, dict):
        found += _object_errors(value, node, where, strict)
    elif isinstance(value, list) and "items" in schema and isinstance(schema["items"], dict):
        for i, item in enumerate(value):
            found += errors_for(item, Node(schema["items"], node.doc), f"{where}[{i}]", strict=strict)
    return found


def _tags(node: Node) -> dict[str, str]:
    """The single-value enum properties of ``node``: a union branch's tag, e.g. ``{"type": "AzureBlobFS"}``."""
    tags: dict[str, str] = {}
    for name, sub in (node.schema.get("properties") or {}).items():
        enum = _resolve(_node(sub, node.doc)).schema.get("enum")
        if isinstance(enum, list) and len(enum) == 1 and isinstance(enum[0], str):
            tags[name] = enum[0].lower()
    return tags


def _discriminator_matches(value: Any, node: Node) -> bool:
    """True when ``value`` carries every tag of the union branch ``node``."""
    tags = _tags(node)
    return bool(tags) and isinstance(value, dict) and all(str(value.get(k, "")).lower() == v for k, v in tags.items())


def _merge(parts: list[Node]) -> Node:
    """One schema with the properties and requirements of all ``parts``, ``allOf`` flattened.

    Each sub-schema is wrapped with the document it came from, so its ``$ref``s still resolve there. Unions
    (``oneOf``/``anyOf``) stay: the first becomes the result's ``oneOf``, any others its ``allOf``, so
    :func:`errors_for` takes them one at a time.
    """
    merged: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    unions: list[list[Any]] = []
    queue = list(parts)
    while queue:
        part = _resolve(queue.pop(0))
        for key, value in part.schema.items():
            if key == "properties":
                for name, sub in value.items():
                    properties[name] = _wrap(sub, part.doc)
            elif key == "required":
                required += list(value)
            elif key == "allOf":
                queue += [_resolve(Node(_wrap(item, part.doc), part.doc)) for item in value]
            elif key in ("oneOf", "anyOf"):
                unions.append([_wrap(branch, part.doc) for branch in value])
            elif key not in ("description", "title", "id", "$schema"):
                merged[key] = _wrap(value, part.doc) if isinstance(value, dict) else value
    if properties:
        merged["properties"] = properties
    if required:
        merged["required"] = required
    if unions:
        merged["oneOf"] = unions[0]
    if len(unions) > 1:
        merged["allOf"] = [{"oneOf": branches} for branches in unions[1:]]
    return Node(merged, "<merged>")


class _Wrapped(dict[str, Any]):
    """A sub-schema that remembers its document (so merged schemas resolve ``$ref`` correctly)."""

    def __init__(self, schema: Mapping[str, Any], doc: str) -> None:
        super().__init__(schema)
        self.doc = doc


def _wrap(schema: Mapping[str, Any], doc: str) -> _Wrapped:
    return schema if isinstance(schema, _Wrapped) else _Wrapped(schema, doc)


def _node(schema: Any, doc: str) -> Node:
    return Node(schema, schema.doc if isinstance(schema, _Wrapped) else doc)


def _object_errors(value: Mapping[str, Any], node: Node, where: str, strict: bool) -> list[str]:
    schema = node.schema
    properties: Mapping[str, Any] = schema.get("properties") or {}
    errors = [
        f"{where}: missing required property {name!r}" for name in schema.get("required", []) if name not in value
    ]
    extra = schema.get("additionalProperties")
    closed = strict and bool(properties) and (extra is None or extra is False)
    for name, item in value.items():
        path = f"{where}.{name}"
        if name in properties:
            errors += errors_for(item, _node(properties[name], node.doc), path, strict=strict)
        elif isinstance(extra, dict) and extra:
            errors += errors_for(item, _node(extra, node.doc), path, strict=strict)
        elif closed:
            errors.append(f"{where}: unknown property {name!r} (allowed: {', '.join(sorted(properties))})")
    return errors


# -- templates ---------------------------------------------------------------------------------------


@cache
def _definitions(api_version: str) -> dict[str, Node]:
    """Resource definitions of one API version folder, by lower-cased full type."""
    found: dict[str, Node] = {}
    folder = SCHEMA_ROOT / api_version
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        doc = f"{api_version}/{path.name}"
        for group, definitions in _document(doc).items():
            if not group.endswith("esourceDefinitions"):
                continue
            for definition in definitions.values():
                for rtype in definition.get("properties", {}).get("type", {}).get("enum", []):
                    found.setdefault(str(rtype).lower(), Node(definition, doc))
    return found


def resource_definition(rtype: str, api_version: str) -> Node:
    """The published schema of resource type ``rtype`` at ``api_version``; SchemaMissing if none is stored."""
    definition = _definitions(api_version).get(rtype.lower())
    if definition is None:
        raise SchemaMissing(f"no schema for {rtype} at {api_version} in {SCHEMA_ROOT} (copy the provider's file there)")
    return definition


def _resources(
    resources: list[Any], parent: tuple[str, str] = ("", ""), where: str = "resources"
) -> Iterator[tuple[str, str, str, Any]]:
    """(full type, full name, location in the template, resource) for each resource, nested children too.

    A nested child names only its last type segment and its own name; the published schema checks the full
    ones (e.g. ``^.*/default$`` for a blob service), so they are joined to the parent's.
    """
    for i, resource in enumerate(resources):
        path = f"{where}[{i}]"
        if not isinstance(resource, dict):
            yield "", "", path, resource
            continue
        rtype, name = str(resource.get("type", "")), str(resource.get("name", ""))
        if parent[0]:
            rtype = f"{parent[0]}/{rtype}"
            name = "[nested]" if is_expression(name) or is_expression(parent[1]) else f"{parent[1]}/{name}"
        yield rtype, name, path, resource
        yield from _resources(resource.get("resources", []), (rtype, name), f"{path}.resources")


def resource_errors(resource: Mapping[str, Any], rtype: str, where: str, name: str | None = None) -> list[str]:
    """Problems of one template resource against its published schema."""
    api_version = str(resource.get("apiVersion", ""))
    try:
        definition = _resolve(resource_definition(rtype, api_version))
    except SchemaMissing as exc:
        return [f"{where} ({rtype}): {exc}"]
    body = {k: v for k, v in resource.items() if k not in TEMPLATE_RESOURCE_KEYS}
    if "type" in body:
        body["type"] = rtype
    if name is not None and "name" in body:
        body["name"] = name
    return errors_for(body, definition, f"{where} ({rtype})")


def template_errors(template: Mapping[str, Any]) -> list[str]:
    """Every schema problem of a deployment template (its own keys, parameters and each resource)."""
    errors = [f"unknown template key {k!r}" for k in template if k not in TEMPLATE_KEYS]
    for name, parameter in (template.get("parameters") or {}).items():
        if str(parameter.get("type", "")).lower() not in PARAMETER_TYPES:
            errors.append(f"parameters.{name}: type {parameter.get('type')!r} is not an ARM parameter type")
    for rtype, name, where, resource in _resources(list(template.get("resources") or [])):
        if not isinstance(resource, dict):
            errors.append(f"{where}: a resource must be an object")
            continue
        if rtype.lower() == "microsoft.resources/deployments":
            inner = resource.get("properties", {}).get("template")
            if isinstance(inner, dict):
                errors += [f"{where}.properties.template: {e}" for e in template_errors(inner)]
            continue
        errors += resource_errors(resource, rtype, where, name)
    return errors


def validate_template(path: str | Path) -> None:
    """Raise AssertionError listing every problem of the ARM template at ``path`` (None when it is valid)."""
    with Path(path).open(encoding="utf-8") as handle:
        template = json.load(handle)
    errors = template_errors(template)
    if errors:
        raise AssertionError(f"{path}: {len(errors)} schema problem(s):\n  " + "\n  ".join(errors))


def main(argv: list[str] | None = None) -> int:
    """Check the templates named on the command line; print the problems; 1 if there are any."""
    status = 0
    for name in argv if argv is not None else sys.argv[1:]:
        try:
            validate_template(name)
            print(f"{name}: ok")
        except AssertionError as exc:
            print(exc)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
