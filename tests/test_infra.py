"""Static checks of the deployment in ``infra/`` (no Azure account, no network).

The ARM templates are parsed with a small ARM expression parser and a partial evaluator:
values it cannot know before deployment (parameters without a value, ``uniqueString``,
``reference`` ...) stay symbolic, so a resource name and a ``resourceId()`` that point at it
evaluate to the same key. That lets the tests check that every reference resolves, every
``dependsOn`` names a resource of the template, the role assignments are exactly the documented
ones, the app settings cover what the code reads, and the Event Grid filter matches the ingest
function. ``deploy.sh`` is run with stand-in ``az`` and ``func`` commands.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared import location as layout

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.json"
EVENTGRID = INFRA / "eventgrid.json"
PARAMS_EXAMPLE = INFRA / "main.parameters.example.json"
DEPLOY_SH = INFRA / "deploy.sh"
LOCAL_SETTINGS_EXAMPLE = ROOT / "local.settings.json.example"

METADATA_SUFFIX = layout.EVENT_GRID_SUBJECT_SUFFIX  # the landing layout's one home: shared/location.py
INGEST_FUNCTION = "ingest_drop"
COMMITTED_BLOB_APIS = {"FlushWithClose", "PutBlob", "PutBlockList", "CopyBlob"}

# SPEC.md, "MGDC and Data Factory facts for the deployment".
ROLE_IDS = {
    "Key Vault Crypto User": "12338af0-0e69-4776-bea7-57ae8d297424",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Queue Data Message Sender": "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Data Factory Contributor": "673868aa-7521-48a0-acc6-0f60742d39f5",
}
ROLE_NAMES = {v: k for k, v in ROLE_IDS.items()}
BROAD_ROLE_IDS = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",  # Owner
    "b24988ac-6180-42a0-ab88-20f7382dd24c",  # Contributor
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",  # User Access Administrator
    "00482a5a-887f-4fb3-b363-3b7fe8e74483",  # Key Vault Administrator
    "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",  # Key Vault Crypto Officer
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",  # Key Vault Secrets Officer
    "17d1049b-9a84-46fb-8f53-869881c3d3ab",  # Storage Account Contributor
}

# (principal, role, scope): the whole set, nothing broader. The factory's identity reading the
# one MGDC app secret is our choice of a Key Vault reference over a plain secret in Data Factory.
EXPECTED_ROLE_ASSIGNMENTS = {
    ("functionApp", "Storage Blob Data Owner", "appStorage"),
    ("functionApp", "Storage Queue Data Contributor", "appStorage"),
    ("functionApp", "Storage Table Data Contributor", "appStorage"),
    ("functionApp", "Storage Blob Data Contributor", "landingStorage"),
    ("functionApp", "Storage Queue Data Contributor", "landingStorage"),
    ("functionApp", "Key Vault Crypto User", "keyVault"),
    ("functionApp", "Data Factory Contributor", "dataFactory"),
    ("mgdcApp", "Key Vault Crypto User", "keyVault"),
    ("mgdcApp", "Storage Blob Data Contributor", "landingStorage"),
    ("dataFactory", "Key Vault Secrets User", "mgdcSecret"),
}

# Every setting the code reads in Azure (the Values of local.settings.json.example, with
# connections in their identity-based form). Kept here too so a missing example cannot hide a gap.
CODE_SETTINGS = {
    "APPLICATIONINSIGHTS_CONNECTION_STRING": None,
    "LANDING_CONTAINER": "datasets",
    "DOWNSTREAM_QUEUE": "viva-insights-rows",
    "DOWNSTREAM_MESSAGE_ENCODING": "gzip-base64",
    "DOWNSTREAM_MESSAGE_TTL_SECONDS": "-1",
    "DOWNSTREAM_PUT_CONCURRENCY": "8",
    "LEDGER_TABLE": "VivaRelayDrops",
    "TENANT_TABLE": "VivaRelayTenants",
    "RUN_TABLE": "VivaRelayRuns",
    "KEY_SOURCE": "keyvault",
    "KEY_VAULT_URL": None,
    "UNWRAP_ALGORITHMS": "RSA-OAEP-256,RSA-OAEP",
    "ALLOW_RSA1_5": "false",
    "DROP_LEASE_SECONDS": "600",
    "CHECKPOINT_EVERY_MESSAGES": "64",
    "WAITING_GIVE_UP_HOURS": "24",
    "FAILED_DROP_RETENTION_DAYS": "0",
    "ORPHAN_GRACE_HOURS": "72",
    "DATA_FACTORY_SUBSCRIPTION_ID": None,
    "DATA_FACTORY_RESOURCE_GROUP": None,
    "DATA_FACTORY_NAME": None,
    "DATA_FACTORY_PIPELINE": "ExportO365DataEvents",
    "RUN_NO_DROP_ALERT_HOURS": "24",
    "MAX_BLANK_LINE_BYTES": "1048576",
    "RECHECK_SCHEDULE": "0 */5 * * * *",
    "PIPELINE_SCHEDULE": "0 0 6 * * Mon",
    "RUN_POLL_SCHEDULE": "0 */10 * * * *",
    "CLEANUP_SCHEDULE": "0 30 2 * * *",
    "CONSENT_WARN_DAYS": "30",
    "KEY_WARN_DAYS": "30",
    "RUN_LATE_HOURS": "24",
    "DROP_WAITING_ALERT_HOURS": "12",
    "QUEUE_BACKLOG_ALERT_MESSAGES": "50000",
    "QUEUE_AGE_ALERT_HOURS": "24",
    "HEALTH_REPEAT_HOURS": "72",
    "HEALTH_TABLE": "VivaRelayHealth",
    "HEALTH_SCHEDULE": "0 0 7 * * *",
}
CONNECTION_FORMS = {
    "AzureWebJobsStorage": ("__blobServiceUri", "__queueServiceUri", "__tableServiceUri"),
    "LandingStorage": ("__blobServiceUri", "__queueServiceUri"),
    "RelayStorage": ("__blobServiceUri", "__queueServiceUri", "__tableServiceUri"),
}
LOCAL_ONLY_SETTINGS = {"FUNCTIONS_WORKER_RUNTIME", "KEY_FOLDER", "DATA_FACTORY_BASE_URL", "AzureWebJobsScriptRoot"}
FORBIDDEN_FLEX_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "AzureWebJobsStorage",
}


# --------------------------------------------------------------------------------------------
# ARM expression parser
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lit:
    value: str | int | float


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Member:
    target: Node
    prop: str


@dataclass(frozen=True)
class Index:
    target: Node
    index: Node


Node = Lit | Call | Member | Index

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),.\[\]]))"
)


class ExpressionError(ValueError):
    pass


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExpressionError(f"cannot tokenize {text[pos:]!r} in {text!r}")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1] != value):
            raise ExpressionError(f"expected {value or kind} at token {self.pos} of {self.text!r}, got {tok}")
        self.pos += 1
        return tok[1]

    def at(self, value: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "punct" and tok[1] == value

    def parse(self) -> Node:
        node = self.expr()
        if self.peek() is not None:
            raise ExpressionError(f"trailing tokens after position {self.pos} in {self.text!r}")
        return node

    def expr(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise ExpressionError(f"unexpected end of {self.text!r}")
        kind, value = tok
        node: Node
        if kind == "str":
            self.pos += 1
            node = Lit(value[1:-1].replace("''", "'"))
        elif kind == "num":
            self.pos += 1
            node = Lit(float(value) if "." in value else int(value))
        elif kind == "ident":
            self.pos += 1
            self.take("punct", "(")
            args: list[Node] = []
            if not self.at(")"):
                args.append(self.expr())
                while self.at(","):
                    self.pos += 1
                    args.append(self.expr())
            self.take("punct", ")")
            node = Call(value, tuple(args))
        else:
            raise ExpressionError(f"unexpected {value!r} in {self.text!r}")
        while True:
            if self.at("."):
                self.pos += 1
                node = Member(node, self.take("ident"))
            elif self.at("["):
                self.pos += 1
                index = self.expr()
                self.take("punct", "]")
                node = Index(node, index)
            else:
                return node


def is_expression(value: str) -> bool:
    return value.startswith("[") and value.endswith("]") and not value.startswith("[[")


def parse_expression(value: str) -> Node:
    """Parse a template string ``[...]`` into its expression tree."""
    assert is_expression(value), value
    return _Parser(value[1:-1]).parse()


def calls(node: Node) -> Iterator[Call]:
    if isinstance(node, Call):
        yield node
        for a in node.args:
            yield from calls(a)
    elif isinstance(node, Member):
        yield from calls(node.target)
    elif isinstance(node, Index):
        yield from calls(node.target)
        yield from calls(node.index)


def test_parser_handles_nesting_escapes_and_accessors() -> None:
    node = parse_expression("[concat('it''s', reference(resourceId('A.B/c', 'x'), '1').id[0], -1)]")
    assert isinstance(node, Call) and node.name == "concat"
    assert node.args[0] == Lit("it's")
    assert node.args[2] == Lit(-1)
    assert [c.name for c in calls(node)] == ["concat", "reference", "resourceId"]
    with pytest.raises(ExpressionError):
        parse_expression("[concat('unterminated)]")
    with pytest.raises(ExpressionError):
        parse_expression("[concat('a', 'b']")
    assert not is_expression("[[literal]")


# --------------------------------------------------------------------------------------------
# Partial evaluator
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sym:
    """A value known only at deployment; ``text`` is its canonical form."""

    text: str


@dataclass(frozen=True)
class Parts:
    """A string made of known text and symbols."""

    parts: tuple[str | Sym, ...]


@dataclass(frozen=True)
class ResRef:
    """The result of ``resourceId()``."""

    type: str
    name: tuple[str, ...]


KNOWN_FUNCTIONS = {
    "parameters", "variables", "resourceId", "subscriptionResourceId", "extensionResourceId",
    "reference", "listKeys", "concat", "format", "toLower", "toUpper", "replace", "take", "string",
    "uniqueString", "guid", "resourceGroup", "subscription", "tenant", "environment", "deployment",
    "if", "empty", "not", "equals", "and", "or", "json", "createArray", "createObject", "int", "bool",
    "last", "first", "split", "length", "contains", "coalesce", "union", "null", "true", "false",
}  # fmt: skip
AZURE_ENVIRONMENT = {
    "name": "AzureCloud",
    "suffixes": {"storage": "core.windows.net", "keyvaultDns": ".vault.azure.net"},
}
# Resources that exist without being declared: the Functions host of a site.
BUILT_IN_CHILDREN = {"microsoft.web/sites/host"}


def render(value: Any) -> str:
    if isinstance(value, Sym):
        return value.text
    if isinstance(value, Parts):
        return "".join(p if isinstance(p, str) else f"⟨{p.text}⟩" for p in value.parts)
    if isinstance(value, ResRef):
        return f"resourceId({value.type}, {'/'.join(value.name)})"
    return json.dumps(value, sort_keys=True)


def to_parts(value: Any) -> tuple[str | Sym, ...]:
    if isinstance(value, Parts):
        return value.parts
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sym):
        return (value,)
    if isinstance(value, ResRef):
        return (Sym(render(value)),)
    if isinstance(value, bool):
        return ("true" if value else "false",)
    if isinstance(value, int | float):
        return (str(value),)
    return (Sym(render(value)),)


def make_string(parts: tuple[str | Sym, ...]) -> str | Parts:
    merged: list[str | Sym] = []
    for p in parts:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] = merged[-1] + p
        elif p != "":
            merged.append(p)
    if all(isinstance(p, str) for p in merged):
        return "".join(p for p in merged if isinstance(p, str))
    return Parts(tuple(merged))


def name_key(value: Any) -> tuple[str, ...]:
    """Split a (partly symbolic) resource name on its literal ``/``."""
    segments: list[str] = [""]
    for p in to_parts(value):
        if isinstance(p, Sym):
            segments[-1] += f"⟨{p.text}⟩"
        else:
            pieces = p.split("/")
            segments[-1] += pieces[0]
            segments.extend(pieces[1:])
    return tuple(segments)


def is_concrete(value: Any) -> bool:
    if isinstance(value, Sym | Parts | ResRef):
        return False
    if isinstance(value, list):
        return all(is_concrete(v) for v in value)
    if isinstance(value, dict):
        return all(is_concrete(v) for v in value.values())
    return True


class Evaluator:
    """Evaluates the ARM expressions of one template.

    With ``use_defaults`` parameters take their default value (or ``overrides``); otherwise they
    stay symbolic, which is what resource keys need. Every reference that does not resolve is
    recorded in ``errors``.
    """

    def __init__(
        self,
        template: Mapping[str, Any],
        *,
        use_defaults: bool = False,
        overrides: Mapping[str, Any] | None = None,
        known_resources: set[tuple[str, tuple[str, ...]]] | None = None,
    ) -> None:
        self.template = template
        self.use_defaults = use_defaults
        self.overrides = dict(overrides or {})
        self.errors: list[str] = []
        self.resource_refs: list[ResRef] = []
        self._evaluating: set[str] = set()
        self.known_resources = known_resources

    # -- values ------------------------------------------------------------------------------
    def value(self, raw: Any) -> Any:
        """Evaluate a JSON value of the template (strings may be expressions)."""
        if isinstance(raw, str):
            if is_expression(raw):
                try:
                    node = parse_expression(raw)
                except ExpressionError as exc:
                    self.errors.append(str(exc))
                    return Sym(raw)
                return self.eval(node)
            if raw.startswith("[["):
                return raw[1:]
            return raw
        if isinstance(raw, list):
            return [self.value(v) for v in raw]
        if isinstance(raw, dict):
            return {k: self.value(v) for k, v in raw.items()}
        return raw

    def eval(self, node: Node) -> Any:
        if isinstance(node, Lit):
            return node.value
        if isinstance(node, Member):
            target = self.eval(node.target)
            if isinstance(target, dict):
                if node.prop not in target:
                    self.errors.append(f"no property {node.prop!r} in {render(target)}")
                    return Sym(f"{render(target)}.{node.prop}")
                return target[node.prop]
            return Sym(f"{render(target)}.{node.prop}")
        if isinstance(node, Index):
            target = self.eval(node.target)
            index = self.eval(node.index)
            if isinstance(target, list) and isinstance(index, int):
                return target[index]
            if isinstance(target, dict) and isinstance(index, str):
                return target[index]
            return Sym(f"{render(target)}[{render(index)}]")
        return self.call(node)

    def call(self, node: Call) -> Any:
        name = node.name
        if name not in KNOWN_FUNCTIONS:
            self.errors.append(f"unknown template function {name}()")
        if name == "parameters":
            return self.parameter(node)
        if name == "variables":
            return self.variable(node)
        args = [self.eval(a) for a in node.args]
        if name in ("resourceId", "subscriptionResourceId"):
            return self.resource_id(name, args)
        if name == "environment":
            return AZURE_ENVIRONMENT
        if name in ("concat", "format") and args:
            if name == "concat" and all(isinstance(a, list) for a in args):
                return [x for a in args for x in a]
            if name == "concat":
                return make_string(tuple(p for a in args for p in to_parts(a)))
            fmt = args[0]
            if not isinstance(fmt, str):
                return Sym(f"format({', '.join(render(a) for a in args)})")
            out: list[str | Sym] = []
            pos = 0
            for m in re.finditer(r"\{(\d+)(?::[^}]*)?\}", fmt):
                out.append(fmt[pos : m.start()])
                i = int(m.group(1))
                if i + 1 >= len(args):
                    self.errors.append(f"format placeholder {{{i}}} without argument in {fmt!r}")
                    continue
                out.extend(to_parts(args[i + 1]))
                pos = m.end()
            out.append(fmt[pos:])
            return make_string(tuple(out))
        if all(is_concrete(a) for a in args):
            if name == "toLower" and isinstance(args[0], str):
                return args[0].lower()
            if name == "toUpper" and isinstance(args[0], str):
                return args[0].upper()
            if name == "replace" and all(isinstance(a, str) for a in args):
                return args[0].replace(args[1], args[2])
            if name == "take" and isinstance(args[0], str) and isinstance(args[1], int):
                return args[0][: args[1]]
            if name == "string":
                return args[0] if isinstance(args[0], str) else json.dumps(args[0])
            if name == "empty":
                return len(args[0]) == 0
            if name == "not":
                return not args[0]
            if name == "equals":
                return args[0] == args[1]
            if name == "if":
                return args[1] if args[0] else args[2]
            if name == "createArray":
                return list(args)
            if name in ("true", "false"):
                return name == "true"
        return Sym(f"{name}({', '.join(render(a) for a in args)})")

    def parameter(self, node: Call) -> Any:
        if len(node.args) != 1 or not isinstance(node.args[0], Lit) or not isinstance(node.args[0].value, str):
            self.errors.append(f"parameters() needs one literal name: {node}")
            return Sym("parameters(?)")
        pname = node.args[0].value
        declared = self.template.get("parameters", {})
        if pname not in declared:
            self.errors.append(f"parameters('{pname}') is not declared")
            return Sym(f"parameters('{pname}')")
        if pname in self.overrides:
            return self.overrides[pname]
        if self.use_defaults and "defaultValue" in declared[pname]:
            return self.guarded(f"p:{pname}", declared[pname]["defaultValue"])
        return Sym(f"parameters('{pname}')")

    def variable(self, node: Call) -> Any:
        if len(node.args) != 1 or not isinstance(node.args[0], Lit) or not isinstance(node.args[0].value, str):
            self.errors.append(f"variables() needs one literal name: {node}")
            return Sym("variables(?)")
        vname = node.args[0].value
        declared = self.template.get("variables", {})
        if vname not in declared:
            self.errors.append(f"variables('{vname}') is not declared")
            return Sym(f"variables('{vname}')")
        return self.guarded(f"v:{vname}", declared[vname])

    def guarded(self, key: str, raw: Any) -> Any:
        if key in self._evaluating:
            self.errors.append(f"cycle through {key}")
            return Sym(key)
        self._evaluating.add(key)
        try:
            return self.value(raw)
        finally:
            self._evaluating.discard(key)

    def resource_id(self, name: str, args: list[Any]) -> Any:
        type_at = next(
            (
                i
                for i, a in enumerate(args)
                if isinstance(a, str) and re.match(r"^[A-Za-z]+\.[A-Za-z.]+(/[A-Za-z]+)+$", a)
            ),
            None,
        )
        if type_at is None:
            self.errors.append(f"{name}() without a literal resource type: {[render(a) for a in args]}")
            return Sym(f"{name}(?)")
        rtype = args[type_at]
        names = args[type_at + 1 :]
        key = name_key(
            make_string(tuple(p for i, a in enumerate(names) for p in ((("/",) if i else ()) + to_parts(a))))
        )
        depth = rtype.count("/")
        if len(key) != depth:
            self.errors.append(f"{name}({rtype}) needs {depth} name segment(s), got {key}")
        ref = ResRef(rtype, key)
        if name == "subscriptionResourceId":
            if rtype.lower() != "microsoft.authorization/roledefinitions":
                self.errors.append(f"subscriptionResourceId() of {rtype}: only role definitions are expected")
            return Sym(f"subscriptionResourceId({rtype}, {'/'.join(key)})")
        self.resource_refs.append(ref)
        return ref


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def strings(obj: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from strings(v, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from strings(v, f"{path}.{k}")


def flat_resources(template: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Resources with nested children flattened to full type and name."""
    out: list[dict[str, Any]] = []

    def walk(resources: list[dict[str, Any]], parent: dict[str, Any] | None) -> None:
        for r in resources:
            flat = dict(r)
            if parent is not None:
                flat["type"] = f"{parent['type']}/{r['type']}"
                flat["_parent_name"] = parent["name"]
            out.append(flat)
            walk(r.get("resources", []), flat)

    walk(list(template.get("resources", [])), None)
    return out


def resource_key(ev: Evaluator, r: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    name = ev.value(r["name"])
    if "_parent_name" in r:
        name = make_string((*to_parts(ev.value(r["_parent_name"])), "/", *to_parts(name)))
    return (str(r["type"]).lower(), name_key(name))


def declared_keys(
    template: Mapping[str, Any], *, use_defaults: bool = False
) -> dict[tuple[str, tuple[str, ...]], dict[str, Any]]:
    ev = Evaluator(template, use_defaults=use_defaults)
    keys = {resource_key(ev, r): r for r in flat_resources(template)}
    assert not ev.errors, ev.errors
    return keys


@pytest.fixture(scope="module")
def main() -> dict[str, Any]:
    return load(MAIN)


@pytest.fixture(scope="module")
def eventgrid() -> dict[str, Any]:
    return load(EVENTGRID)


def resources_of(template: Mapping[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [r for r in flat_resources(template) if str(r["type"]).lower() == rtype.lower()]


def one(template: Mapping[str, Any], rtype: str) -> dict[str, Any]:
    found = resources_of(template, rtype)
    assert len(found) == 1, f"expected one {rtype}, found {len(found)}"
    return found[0]


def evaluated(template: Mapping[str, Any], raw: Any, **overrides: Any) -> Any:
    ev = Evaluator(template, use_defaults=True, overrides=overrides)
    result = ev.value(raw)
    assert not ev.errors, ev.errors
    return result


def scope_key(ev: Evaluator, raw_scope: str) -> tuple[str, tuple[str, ...]]:
    """``Microsoft.X/type/name[/type/name]`` (an extension resource's scope) to a resource key."""
    segments = name_key(ev.value(raw_scope))
    assert len(segments) >= 3 and len(segments) % 2 == 1, f"not a resource scope: {segments}"
    namespace, rest = segments[0], segments[1:]
    rtype = "/".join([namespace, *rest[0::2]])
    return (rtype.lower(), tuple(rest[1::2]))


# --------------------------------------------------------------------------------------------
# Files, schema, references
# --------------------------------------------------------------------------------------------


def test_templates_are_arm_deployment_templates(main: dict[str, Any], eventgrid: dict[str, Any]) -> None:
    for t in (main, eventgrid):
        assert t["$schema"] == "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
        assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", t["contentVersion"])
        for r in flat_resources(t):
            assert {"type", "apiVersion", "name"} <= set(r), r.get("name")
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}(-preview)?", r["apiVersion"]), r["apiVersion"]
    params = load(PARAMS_EXAMPLE)
    assert params["$schema"].endswith("/deploymentParameters.json#")
    assert "contentVersion" in params


def bound_to_main(template: Mapping[str, Any], main: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters of a later template that deploy.sh fills from main.json outputs of the same name."""
    if template is main:
        return {}
    ev = Evaluator(main)
    outputs = main.get("outputs", {})
    return {p: ev.value(outputs[p]["value"]) for p in template.get("parameters", {}) if p in outputs}


@pytest.mark.parametrize("path", [MAIN, EVENTGRID], ids=lambda p: p.name)
def test_every_reference_resolves(path: Path, main: dict[str, Any]) -> None:
    template = main if path == MAIN else load(path)
    bound = bound_to_main(template, main)
    known = set(declared_keys(main))
    ev = Evaluator(template, overrides=bound)
    known |= {resource_key(ev, r) for r in flat_resources(template)}
    n_expressions = 0
    for where, s in strings(template):
        if is_expression(s):
            n_expressions += 1
            before = len(ev.errors)
            ev.value(s)
            ev.errors[before:] = [f"{where}: {e}" for e in ev.errors[before:]]
    assert n_expressions >= 5
    assert not ev.errors, "\n".join(ev.errors)
    unresolved = [
        f"{ref.type} {'/'.join(ref.name)}"
        for ref in ev.resource_refs
        if (ref.type.lower(), ref.name) not in known and ref.type.lower() not in BUILT_IN_CHILDREN
    ]
    assert not unresolved, "resourceId() of resources no template declares:\n" + "\n".join(unresolved)


def test_reference_checker_catches_dangling_references() -> None:
    template = {
        "parameters": {"p": {"type": "string"}},
        "variables": {"v": "[parameters('p')]"},
        "resources": [{"type": "Microsoft.Storage/storageAccounts", "apiVersion": "x", "name": "[variables('v')]"}],
    }
    ev = Evaluator(template)
    ev.value("[concat(parameters('missing'), variables('nope'), format('{0}', 1))]")
    assert any("missing" in e for e in ev.errors)
    assert any("nope" in e for e in ev.errors)
    ref = ev.value("[resourceId('Microsoft.Storage/storageAccounts', variables('v'))]")
    assert (ref.type.lower(), ref.name) in declared_keys(template)
    other = ev.value("[resourceId('Microsoft.Storage/storageAccounts', 'other')]")
    assert (other.type.lower(), other.name) not in declared_keys(template)


@pytest.mark.parametrize("path", [MAIN, EVENTGRID], ids=lambda p: p.name)
def test_every_depends_on_names_a_resource_of_the_template(path: Path) -> None:
    template = load(path)
    keys = declared_keys(template)
    ev = Evaluator(template)
    for r in flat_resources(template):
        for dep in r.get("dependsOn", []):
            target = ev.value(dep)
            assert isinstance(target, ResRef), f"{r['name']}: dependsOn {dep!r} is not a resourceId()"
            assert (target.type.lower(), target.name) in keys, f"{r['name']}: dependsOn {dep!r} names nothing"
    assert not ev.errors, ev.errors


def objects(obj: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside ``obj``."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from objects(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from objects(v)


def test_data_factory_references_name_declared_children(main: dict[str, Any]) -> None:
    ev = Evaluator(main, use_defaults=True)
    factory_name = name_key(ev.value(one(main, "Microsoft.DataFactory/factories")["name"]))
    kinds = {
        "IntegrationRuntimeReference": "integrationRuntimes",
        "LinkedServiceReference": "linkedServices",
        "DatasetReference": "datasets",
    }
    children: dict[str, set[str]] = {kind: set() for kind in kinds.values()}
    for r in flat_resources(main):
        parts = str(r["type"]).split("/")
        if parts[:2] == ["Microsoft.DataFactory", "factories"] and len(parts) == 3 and parts[2] in children:
            key = name_key(ev.value(r["name"]))
            assert key[:-1] == factory_name
            children[parts[2]].add(key[-1])
    n = 0
    for r in flat_resources(main):
        deps = {render(ev.value(d)) for d in r.get("dependsOn", [])}
        for obj in objects(ev.value(r.get("properties", {}))):
            kind = kinds.get(obj.get("type", ""))
            if kind is None:
                continue
            n += 1
            ref_name = obj["referenceName"]
            assert ref_name in children[kind], f"{r['name']}: {kind} {ref_name!r} is not declared"
            assert any(d.endswith(f"/{ref_name})") for d in deps), f"{r['name']} does not depend on {ref_name}"
    assert n >= 8


# --------------------------------------------------------------------------------------------
# Parameters and secrets
# --------------------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"secret|password|passwd|credential|key(?!vault)", re.IGNORECASE)


@pytest.mark.parametrize("path", [MAIN, EVENTGRID], ids=lambda p: p.name)
def test_secrets_are_securestring(path: Path) -> None:
    template = load(path)
    secrets = []
    for name, spec in template.get("parameters", {}).items():
        if SECRET_NAME.search(name):
            secrets.append(name)
            assert spec["type"].lower() in ("securestring", "secureobject"), f"{name} must be securestring"
            assert spec.get("defaultValue", "") in ("", {}), f"{name} must not have a default value"
    for out_name, out in template.get("outputs", {}).items():
        text = json.dumps(out)
        for s in secrets:
            assert f"parameters('{s}')" not in text, f"output {out_name} leaks {s}"
        assert "listKeys(" not in text and "listSecrets(" not in text, f"output {out_name} leaks a key"
    if path == MAIN:
        assert "mgdcAppSecret" in secrets


def test_secret_check_would_catch_a_plain_string() -> None:
    assert SECRET_NAME.search("mgdcAppSecret")
    assert SECRET_NAME.search("storageAccountKey")
    assert not SECRET_NAME.search("keyVaultName")
    assert not SECRET_NAME.search("mgdcAppTenantId")


def test_parameters_example_matches_the_template(main: dict[str, Any]) -> None:
    example = load(PARAMS_EXAMPLE)["parameters"]
    declared = main["parameters"]
    assert set(example) <= set(declared), set(example) - set(declared)
    required = {n for n, spec in declared.items() if "defaultValue" not in spec}
    assert required <= set(example), f"the example misses required parameters {required - set(example)}"
    for name in example:
        assert declared[name]["type"].lower() != "securestring", f"the example must not carry {name}"
        allowed = declared[name].get("allowedValues")
        if allowed:
            assert example[name]["value"] in allowed


# --------------------------------------------------------------------------------------------
# Function App (Flex Consumption) and its settings
# --------------------------------------------------------------------------------------------


def test_function_app_is_flex_consumption_python_311(main: dict[str, Any]) -> None:
    plan = one(main, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True
    site = one(main, "Microsoft.Web/sites")
    assert site["apiVersion"] >= "2023-12-01"
    assert site["kind"] == "functionapp,linux"
    assert site["identity"] == {"type": "SystemAssigned"}
    props = site["properties"]
    assert props["httpsOnly"] is True
    ev = Evaluator(main)
    assert render(ev.value(props["serverFarmId"])) == render(
        ev.value("[resourceId('Microsoft.Web/serverfarms', variables('planName'))]")
    )
    config = props["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert evaluated(main, config["scaleAndConcurrency"]["instanceMemoryMB"]) == 2048
    assert evaluated(main, config["scaleAndConcurrency"]["maximumInstanceCount"]) >= 40
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "SystemAssignedIdentity"}
    # the package container is declared on the app account
    url = name_key(ev.value(storage["value"]))
    container = url[-1]
    app_account = app_storage_key(main)[1][0]
    assert url[2] == f"{app_account}.blob.⟨environment().suffixes.storage⟩" or url[2].startswith(app_account)
    assert ("microsoft.storage/storageaccounts/blobservices/containers", (app_account, "default", container)) in (
        declared_keys(main)
    )


def app_settings(main: Mapping[str, Any]) -> dict[str, Any]:
    site = one(main, "Microsoft.Web/sites")
    raw = site["properties"]["siteConfig"]["appSettings"]
    names = [s["name"] for s in raw]
    assert len(names) == len(set(names)), "duplicate app settings"
    return {s["name"]: s["value"] for s in raw}


def local_settings_requirements(path: Path = LOCAL_SETTINGS_EXAMPLE) -> set[str]:
    """Setting names the app reads in Azure, from local.settings.json.example (if present)."""
    if not path.exists():
        return set()
    values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    required: set[str] = set()
    for name, value in values.items():
        base = name.split("__", 1)[0]
        if name in LOCAL_ONLY_SETTINGS:
            continue
        if base in CONNECTION_FORMS:
            required.update(base + suffix for suffix in CONNECTION_FORMS[base])
            continue
        if isinstance(value, str) and ("UseDevelopmentStorage=true" in value or "AccountKey=" in value):
            continue  # some other local connection string: nothing to set in Azure under that name
        required.add(name)
    return required


def required_settings() -> set[str]:
    from_code = set(CODE_SETTINGS) | {base + s for base, forms in CONNECTION_FORMS.items() for s in forms}
    return from_code | local_settings_requirements()


def test_every_setting_the_code_reads_is_set(main: dict[str, Any]) -> None:
    settings = app_settings(main)
    missing = required_settings() - set(settings)
    assert not missing, f"app settings missing from main.json: {sorted(missing)}"
    if LOCAL_SETTINGS_EXAMPLE.exists():
        assert local_settings_requirements(), "local.settings.json.example has no Values"


def test_app_setting_values(main: dict[str, Any]) -> None:
    settings = app_settings(main)
    for name, expected in CODE_SETTINGS.items():
        if expected is None:
            continue
        assert evaluated(main, settings[name]) == expected, name
    assert not FORBIDDEN_FLEX_SETTINGS & set(settings), "Flex Consumption rejects these; keep them local"
    assert not LOCAL_ONLY_SETTINGS & set(settings)
    assert not any("AccountKey=" in str(v) for v in settings.values()), "identity only, no account keys"
    ev = Evaluator(main)
    app_account = app_storage_key(main)[1][0]
    landing_account = landing_storage_key(main)[1][0]
    for conn, account in (
        ("AzureWebJobsStorage", app_account),
        ("RelayStorage", app_account),
        ("LandingStorage", landing_account),
    ):
        for suffix in CONNECTION_FORMS[conn]:
            service = suffix.removeprefix("__").removesuffix("ServiceUri")
            value = render(ev.value(settings[conn + suffix]))
            assert value.startswith(f"https://{account}.{service}."), f"{conn}{suffix} = {value}"
    kv = one(main, "Microsoft.KeyVault/vaults")
    vault = name_key(ev.value(kv["name"]))[0]
    assert render(ev.value(settings["KEY_VAULT_URL"])) == f"https://{vault}.vault.azure.net/"
    factory = one(main, "Microsoft.DataFactory/factories")
    assert name_key(ev.value(settings["DATA_FACTORY_NAME"])) == name_key(ev.value(factory["name"]))
    assert "ConnectionString" in render(ev.value(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"]))


def test_settings_requirements_from_the_local_example(tmp_path: Path) -> None:
    example = tmp_path / "local.settings.json.example"
    example.write_text(
        json.dumps(
            {
                "Values": {
                    "FUNCTIONS_WORKER_RUNTIME": "python",
                    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
                    "LandingStorage": "UseDevelopmentStorage=true",
                    "KEY_FOLDER": "keys",
                    "SOMETHING_NEW": "1",
                }
            }
        )
    )
    required = local_settings_requirements(example)
    assert required == {
        "SOMETHING_NEW",
        "AzureWebJobsStorage__blobServiceUri",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage__tableServiceUri",
        "LandingStorage__blobServiceUri",
        "LandingStorage__queueServiceUri",
    }


# --------------------------------------------------------------------------------------------
# Storage, Key Vault
# --------------------------------------------------------------------------------------------


def storage_accounts(main: Mapping[str, Any]) -> list[dict[str, Any]]:
    return resources_of(main, "Microsoft.Storage/storageAccounts")


def landing_storage_key(main: Mapping[str, Any], *, use_defaults: bool = False) -> tuple[str, tuple[str, ...]]:
    ev = Evaluator(main, use_defaults=use_defaults)
    found = [a for a in storage_accounts(main) if a["properties"].get("isHnsEnabled") is True]
    assert len(found) == 1
    return resource_key(ev, found[0])


def app_storage_key(main: Mapping[str, Any], *, use_defaults: bool = False) -> tuple[str, tuple[str, ...]]:
    ev = Evaluator(main, use_defaults=use_defaults)
    found = [a for a in storage_accounts(main) if a["properties"].get("isHnsEnabled") is not True]
    assert len(found) == 1
    return resource_key(ev, found[0])


def test_storage_accounts_are_locked_down(main: dict[str, Any]) -> None:
    accounts = storage_accounts(main)
    assert len(accounts) == 2
    for a in accounts:
        p = a["properties"]
        assert p["minimumTlsVersion"] == "TLS1_2"
        assert p["supportsHttpsTrafficOnly"] is True
        assert p["allowBlobPublicAccess"] is False
        assert p["allowSharedKeyAccess"] is False


def test_storage_holds_what_the_app_uses(main: dict[str, Any]) -> None:
    keys = declared_keys(main, use_defaults=True)
    ev = Evaluator(main, use_defaults=True)
    settings = app_settings(main)
    landing = landing_storage_key(main, use_defaults=True)[1][0]
    app = app_storage_key(main, use_defaults=True)[1][0]
    container = ev.value(settings["LANDING_CONTAINER"])
    assert ("microsoft.storage/storageaccounts/blobservices/containers", (landing, "default", container)) in keys
    queue = ev.value(settings["DOWNSTREAM_QUEUE"])
    for q in (queue, f"{queue}-poison"):
        assert ("microsoft.storage/storageaccounts/queueservices/queues", (app, "default", q)) in keys, q
    for t in ("LEDGER_TABLE", "TENANT_TABLE", "RUN_TABLE", "HEALTH_TABLE"):
        table = ev.value(settings[t])
        assert ("microsoft.storage/storageaccounts/tableservices/tables", (app, "default", table)) in keys, t


def test_key_vault_uses_rbac_and_cannot_be_purged(main: dict[str, Any]) -> None:
    kv = one(main, "Microsoft.KeyVault/vaults")
    p = kv["properties"]
    assert p["enableRbacAuthorization"] is True
    assert p["enableSoftDelete"] is True
    assert p["enablePurgeProtection"] is True
    assert not p.get("accessPolicies")
    assert not resources_of(main, "Microsoft.KeyVault/vaults/keys"), "tenant keys belong to the CLI"
    assert not resources_of(main, "Microsoft.KeyVault/vaults/accessPolicies")


# --------------------------------------------------------------------------------------------
# Role assignments
# --------------------------------------------------------------------------------------------


def scope_labels(main: Mapping[str, Any]) -> dict[tuple[str, tuple[str, ...]], str]:
    ev = Evaluator(main)
    labels = {app_storage_key(main): "appStorage", landing_storage_key(main): "landingStorage"}
    labels[resource_key(ev, one(main, "Microsoft.KeyVault/vaults"))] = "keyVault"
    labels[resource_key(ev, one(main, "Microsoft.DataFactory/factories"))] = "dataFactory"
    labels[resource_key(ev, one(main, "Microsoft.KeyVault/vaults/secrets"))] = "mgdcSecret"
    return labels


def principal_label(raw: str) -> str:
    node = parse_expression(raw)
    names = [c for c in calls(node)]
    if any(c.name == "parameters" and c.args == (Lit("mgdcServicePrincipalObjectId"),) for c in names):
        return "mgdcApp"
    if isinstance(node, Member) and node.prop == "principalId":
        for c in names:
            if c.name == "resourceId" and c.args and c.args[0] == Lit("Microsoft.Web/sites"):
                return "functionApp"
            if c.name == "resourceId" and c.args and c.args[0] == Lit("Microsoft.DataFactory/factories"):
                return "dataFactory"
    raise AssertionError(f"unknown principal {raw}")


def role_assignments(main: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    ev = Evaluator(main)
    labels = scope_labels(main)
    found: list[tuple[str, str, str]] = []
    for ra in resources_of(main, "Microsoft.Authorization/roleAssignments"):
        assert "scope" in ra, f"{ra['name']}: a role assignment without scope covers the whole resource group"
        scope = scope_key(ev, ra["scope"])
        assert scope in labels, f"{ra['name']}: scope {scope} is not one of {sorted(labels.values())}"
        props = ra["properties"]
        role_node = parse_expression(props["roleDefinitionId"])
        assert isinstance(role_node, Call) and role_node.name == "subscriptionResourceId"
        assert role_node.args[0] == Lit("Microsoft.Authorization/roleDefinitions")
        role_id = ev.eval(role_node.args[1])
        assert isinstance(role_id, str), f"{ra['name']}: role id must be a literal"
        assert role_id not in BROAD_ROLE_IDS, f"{ra['name']}: {role_id} is too broad"
        assert role_id in ROLE_NAMES, f"{ra['name']}: {role_id} is not a documented role"
        assert props["principalType"] == "ServicePrincipal"
        name = parse_expression(ra["name"])
        assert isinstance(name, Call) and name.name == "guid", "role assignment names must be deterministic guids"
        found.append((principal_label(props["principalId"]), ROLE_NAMES[role_id], labels[scope]))
    assert len(found) == len(set(found)), "duplicate role assignments"
    assert not ev.errors, ev.errors
    return set(found)


def test_role_assignments_are_exactly_the_documented_ones(main: dict[str, Any]) -> None:
    assert role_assignments(main) == EXPECTED_ROLE_ASSIGNMENTS


def test_role_check_rejects_a_broad_role(main: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(main))
    broken["variables"]["roleKeyVaultCryptoUser"] = "b24988ac-6180-42a0-ab88-20f7382dd24c"
    with pytest.raises(AssertionError):
        role_assignments(broken)


def test_role_assignment_names_are_unique(main: dict[str, Any]) -> None:
    ev = Evaluator(main)
    names = [render(ev.value(ra["name"])) for ra in resources_of(main, "Microsoft.Authorization/roleAssignments")]
    assert len(names) == len(set(names))


# --------------------------------------------------------------------------------------------
# Data Factory pipeline
# --------------------------------------------------------------------------------------------


def adf_child(main: Mapping[str, Any], kind: str, name: str) -> dict[str, Any]:
    ev = Evaluator(main, use_defaults=True)
    for r in resources_of(main, f"Microsoft.DataFactory/factories/{kind}"):
        if name_key(ev.value(r["name"]))[-1] == name:
            return r
    raise AssertionError(f"no {kind} {name}")


def walk_activities(activities: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for a in activities:
        yield a
        tp = a.get("typeProperties", {})
        for branch in ("ifTrueActivities", "ifFalseActivities", "activities"):
            yield from walk_activities(tp.get(branch, []))


def test_pipeline_is_one_per_region_parameterised_by_tenant(main: dict[str, Any]) -> None:
    settings = app_settings(main)
    pipeline_name = evaluated(main, settings["DATA_FACTORY_PIPELINE"])
    assert pipeline_name == "ExportO365DataEvents"
    pipelines = resources_of(main, "Microsoft.DataFactory/factories/pipelines")
    assert len(pipelines) == 1
    pipeline = evaluated(main, adf_child(main, "pipelines", pipeline_name)["properties"])
    params = pipeline["parameters"]
    assert {"TenantId", "RequestStartDate", "RequestEndDate", "AggregationType", "IncludeDirectory"} <= set(params)
    assert "defaultValue" not in params["TenantId"]
    assert params["AggregationType"]["defaultValue"] == "Week"
    assert params["IncludeDirectory"] == {"type": "bool", "defaultValue": False}
    assert not resources_of(main, "Microsoft.DataFactory/factories/triggers"), "the app's timer starts runs"

    activities = {a["name"]: a for a in walk_activities(pipeline["activities"])}
    copies = [a for a in activities.values() if a["type"] == "Copy"]
    assert len(copies) == 2
    datasets = {
        name_key(evaluated(main, d["name"]))[-1]: evaluated(main, d["properties"])
        for d in resources_of(main, "Microsoft.DataFactory/factories/datasets")
    }
    sink_folders = {}
    for copy in copies:
        assert copy["typeProperties"]["source"]["type"] == "Office365Source"
        assert copy["typeProperties"]["sink"]["type"] == "BinarySink"
        source = datasets[copy["inputs"][0]["referenceName"]]
        assert source["type"] == "Office365Table"
        assert source["linkedServiceName"]["parameters"]["TenantId"] == "@dataset().TenantId"
        assert copy["inputs"][0]["parameters"]["TenantId"] == "@pipeline().parameters.TenantId"
        sink = datasets[copy["outputs"][0]["referenceName"]]
        assert sink["type"] == "Binary"
        assert sink["typeProperties"]["location"]["type"] == "AzureBlobFSLocation"
        assert sink["typeProperties"]["location"]["fileSystem"] == evaluated(main, settings["LANDING_CONTAINER"])
        assert sink["typeProperties"]["location"]["folderPath"]["value"] == "@dataset().FolderPath"
        sink_folders[source["typeProperties"]["tableName"]] = copy["outputs"][0]["parameters"]["FolderPath"]
    # Microsoft's sample layout, which the ingest function expects: <RunId>/VivaInsights/<TenantId>
    layout = "@concat(pipeline().RunId, '/{0}/', pipeline().parameters.TenantId)"
    assert sink_folders == {
        "VivaInsightsDataset_PersonReport_v1": layout.format("VivaInsights"),
        "BasicDataSet_v0.User_v1": layout.format("AADUser"),
    }
    # the directory copy runs only when IncludeDirectory is true
    gates = [a for a in activities.values() if a["type"] == "IfCondition"]
    assert len(gates) == 1
    assert "pipeline().parameters.IncludeDirectory" in gates[0]["typeProperties"]["expression"]["value"]
    gated = [a["name"] for a in gates[0]["typeProperties"]["ifTrueActivities"]]
    directory_copy = next(
        c["name"]
        for c in copies
        if datasets[c["inputs"][0]["referenceName"]]["typeProperties"]["tableName"] == "BasicDataSet_v0.User_v1"
    )
    assert gated == [directory_copy]
    assert not gates[0]["typeProperties"].get("ifFalseActivities")


def test_linked_services_use_service_principals(main: dict[str, Any]) -> None:
    ev = Evaluator(main, use_defaults=True)
    by_type = {}
    for r in resources_of(main, "Microsoft.DataFactory/factories/linkedServices"):
        props = ev.value(r["properties"])
        by_type[props["type"]] = props
    o365 = by_type["Office365"]["typeProperties"]
    assert o365["office365TenantId"] == "@{linkedService().TenantId}"
    assert "TenantId" in by_type["Office365"]["parameters"]
    assert render(o365["servicePrincipalId"]) == "parameters('mgdcAppId')"
    assert render(o365["servicePrincipalTenantId"]) == "subscription().tenantId"
    assert o365["servicePrincipalKey"]["type"] == "AzureKeyVaultSecret"
    sink = by_type["AzureBlobFS"]["typeProperties"]
    assert "accountKey" not in sink and "sasUri" not in sink
    assert render(sink["servicePrincipalId"]) == "parameters('mgdcAppId')"
    assert sink["servicePrincipalCredential"]["type"] == "AzureKeyVaultSecret"
    landing = landing_storage_key(main, use_defaults=True)[1][0]
    assert render(sink["url"]) == f"https://{landing}.dfs.core.windows.net/"
    assert "AzureKeyVault" in by_type
    for props in (by_type["Office365"], by_type["AzureBlobFS"]):
        assert props["connectVia"]["type"] == "IntegrationRuntimeReference"
    runtime = one(main, "Microsoft.DataFactory/factories/integrationRuntimes")
    assert runtime["properties"]["type"] == "Managed"


# --------------------------------------------------------------------------------------------
# Event Grid
# --------------------------------------------------------------------------------------------


def test_system_topic_watches_the_landing_account(main: dict[str, Any]) -> None:
    topic = one(main, "Microsoft.EventGrid/systemTopics")
    assert topic["properties"]["topicType"] == "Microsoft.Storage.StorageAccounts"
    source = Evaluator(main).value(topic["properties"]["source"])
    assert isinstance(source, ResRef)
    assert (source.type.lower(), source.name) == landing_storage_key(main)
    assert not resources_of(main, "Microsoft.EventGrid/systemTopics/eventSubscriptions"), (
        "the subscription needs the published code's key: it belongs to eventgrid.json"
    )


class _Constants:
    """Module-level string constants of the app's Python sources, read with ``ast`` (nothing imported)."""

    def __init__(self) -> None:
        self.modules: dict[str, ast.Module] = {}

    def module(self, dotted: str) -> ast.Module | None:
        if dotted not in self.modules:
            path = ROOT.joinpath(*dotted.split(".")).with_suffix(".py")
            if not path.exists():
                return None
            self.modules[dotted] = ast.parse(path.read_text(encoding="utf-8"))
        return self.modules[dotted]

    def resolve(self, node: ast.expr, module: ast.Module, depth: int = 0) -> str | None:
        if depth > 10:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.resolve(node.left, module, depth + 1), self.resolve(node.right, module, depth + 1)
            return None if left is None or right is None else left + right
        if isinstance(node, ast.JoinedStr):
            pieces = []
            for v in node.values:
                inner = v.value if isinstance(v, ast.FormattedValue) else v
                piece = self.resolve(inner, module, depth + 1)
                if piece is None:
                    return None
                pieces.append(piece)
            return "".join(pieces)
        if isinstance(node, ast.Name):
            for stmt in module.body:
                if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
                    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                    if any(isinstance(t, ast.Name) and t.id == node.id for t in targets):
                        return self.resolve(stmt.value, module, depth + 1)
                if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                    for alias in stmt.names:
                        if (alias.asname or alias.name) == node.id:
                            other = self.module(stmt.module)
                            if other is not None:
                                return self.resolve(ast.Name(id=alias.name), other, depth + 1)
        return None


def ingest_trigger() -> tuple[str, str] | None:
    """(path, source) of the ingest function's blob trigger, read from the code when it exists."""
    constants = _Constants()
    sources = [ROOT / "function_app.py", *sorted((ROOT / "functions").glob("*.py"))]
    for src in sources:
        if not src.exists():
            continue
        dotted = ".".join(src.relative_to(ROOT).with_suffix("").parts)
        module = constants.module(dotted)
        assert module is not None
        for fn in ast.walk(module):
            if not isinstance(fn, ast.FunctionDef) or fn.name != INGEST_FUNCTION:
                continue
            for deco in fn.decorator_list:
                if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute):
                    if deco.func.attr != "blob_trigger":
                        continue
                    kw = {k.arg: k.value for k in deco.keywords}
                    path = constants.resolve(kw["path"], module)
                    assert path is not None, f"cannot read the blob trigger path of {INGEST_FUNCTION} in {src}"
                    return path, ast.unparse(kw.get("source", ast.Constant("")))
    return None


def test_ingest_trigger_reader_resolves_constants() -> None:
    module = ast.parse('A = "x/"\nB: str = A + f"{A}y"\n')
    constants = _Constants()
    name = module.body[1]
    assert isinstance(name, ast.AnnAssign) and name.value is not None
    assert constants.resolve(name.value, module) == "x/x/y"


def ingest_function_path() -> str:
    found = ingest_trigger()
    if found is None:  # the code is not there yet: the documented contract
        return "%LANDING_CONTAINER%/{name}"
    path, source = found
    assert "EVENT_GRID" in source or "EventGrid" in source, f"{INGEST_FUNCTION} must use the Event Grid source"
    return path


def test_event_grid_filter_matches_the_ingest_function(main: dict[str, Any], eventgrid: dict[str, Any]) -> None:
    path = ingest_function_path()
    container_token, _, blob_pattern = path.partition("/")
    m = re.fullmatch(r"%(\w+)%", container_token)
    assert m, f"the trigger's container must come from an app setting, not {container_token}"
    container = evaluated(main, app_settings(main)[m.group(1)])
    # the literal tail of the trigger path (after its last {token}), if any, is the suffix to filter on
    tail = blob_pattern.rsplit("}", 1)[-1]
    if tail:
        assert "/" + tail.lstrip("/") == METADATA_SUFFIX, f"trigger path {path} vs {METADATA_SUFFIX}"
    # deploy.sh passes main's landingContainer output to eventgrid.json
    assert evaluated(main, main["outputs"]["landingContainer"]["value"]) == container

    sub = one(eventgrid, "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    # its parent is main's system topic, once deploy.sh has passed main's outputs
    ev = Evaluator(eventgrid, overrides=bound_to_main(eventgrid, main))
    topic = resource_key(Evaluator(main), one(main, "Microsoft.EventGrid/systemTopics"))
    assert name_key(ev.value(sub["name"]))[:-1] == topic[1]
    f = evaluated(eventgrid, sub["properties"]["filter"], landingContainer=container)
    assert f["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert f["subjectBeginsWith"] == f"/blobServices/default/containers/{container}/blobs/"
    assert f["subjectEndsWith"] == METADATA_SUFFIX
    assert "*" not in f["subjectBeginsWith"] + f["subjectEndsWith"], "subject filters take no wildcards"
    # the function matches the suffix case-insensitively: the filter must not be stricter
    assert f.get("isSubjectCaseSensitive", False) is False
    api_filters = [a for a in f["advancedFilters"] if a["key"] == "data.api"]
    assert len(api_filters) == 1
    assert api_filters[0]["operatorType"] == "StringIn"
    assert set(api_filters[0]["values"]) == COMMITTED_BLOB_APIS, "CreateFile (empty file) must not trigger"
    # the same default as main, so a standalone deployment agrees too
    assert evaluated(eventgrid, sub["properties"]["filter"]["subjectBeginsWith"]) == f["subjectBeginsWith"]


def test_event_grid_filter_and_trigger_path_come_from_the_landing_layout(
    main: dict[str, Any], eventgrid: dict[str, Any]
) -> None:
    """infra/eventgrid.json's subject filter is exactly what shared.location says the layout needs."""
    # the trigger path as the function app declares it (read from its source) is the layout's
    assert ingest_function_path() == layout.TRIGGER_PATH
    container = evaluated(main, app_settings(main)["LANDING_CONTAINER"])
    sub = one(eventgrid, "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    f = evaluated(eventgrid, sub["properties"]["filter"], landingContainer=container)
    expected = layout.event_grid_filter(container)
    assert {k: f.get(k, False) for k in expected} == expected
    # ...and what it lets through is what the layout calls a drop's Metadata.json
    subject = f"{f['subjectBeginsWith']}run/VivaInsights/tenant{f['subjectEndsWith']}"
    blob = subject.removeprefix(layout.event_grid_subject_prefix(container))
    assert layout.is_metadata_blob(blob)
    assert layout.location_from_blob("acct", container, blob).drop_root == "run/VivaInsights/tenant"


def test_data_factory_writes_drops_where_the_landing_layout_expects_them(main: dict[str, Any]) -> None:
    """The pipeline's sink folders are the layout's sample drop roots (run id, dataset folder, tenant)."""
    folders = sorted(
        v["parameters"]["FolderPath"]
        for v in _walk_dicts(main)
        if isinstance(v.get("parameters"), dict) and "FolderPath" in v["parameters"] and "referenceName" in v
    )
    expression = "@concat(pipeline().RunId, '/{0}/', pipeline().parameters.TenantId)"
    folder_names = (layout.PERSON_DATASET_FOLDER, layout.DIRECTORY_DATASET_FOLDER)
    assert folders == sorted(expression.format(f) for f in folder_names)
    for folder in folder_names:
        root = layout.sample_drop_root("run-1", "TENANT", folder)
        assert root == "run-1/" + folder + "/TENANT"
        location = layout.DropLocation("acct", "datasets", root)
        assert location.run_id == "run-1" and location.drop_root == root


def _walk_dicts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk_dicts(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_dicts(v)


def test_event_grid_webhook_targets_the_blob_extension(eventgrid: dict[str, Any]) -> None:
    sub = one(eventgrid, "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    dest = sub["properties"]["destination"]
    assert dest["endpointType"] == "WebHook"
    raw = dest["properties"]["endpointUrl"]
    url = render(evaluated(eventgrid, raw))
    assert url.startswith("https://")
    assert f"/runtime/webhooks/blobs?functionName=Host.Functions.{INGEST_FUNCTION}&code=⟨listKeys(" in url
    node = parse_expression(raw)
    keys = [c for c in calls(node) if c.name == "listKeys"]
    assert len(keys) == 1
    target = keys[0].args[0]
    assert isinstance(target, Call) and target.name == "resourceId"
    assert target.args[0] == Lit("Microsoft.Web/sites/host")
    assert target.args[2] == Lit("default")
    assert "systemKeys.blobs_extension" in url
    assert sub["properties"].get("eventDeliverySchema", "EventGridSchema") == "EventGridSchema"


# --------------------------------------------------------------------------------------------
# Outputs and deploy.sh
# --------------------------------------------------------------------------------------------


def test_outputs(main: dict[str, Any]) -> None:
    outputs = main["outputs"]
    assert {"functionAppName", "keyVaultUri", "consentLink"} <= set(outputs)
    consent = render(evaluated(main, outputs["consentLink"]["value"]))
    assert consent.startswith("https://admin.microsoft.com/Adminportal/Home#/Settings/MGDCAdminCenter/")
    assert consent.endswith("/⟨parameters('mgdcAppId')⟩")
    assert "vaultUri" in outputs["keyVaultUri"]["value"]
    script = DEPLOY_SH.read_text(encoding="utf-8")
    used = set(re.findall(r"main_output (\w+)", script)) | set(
        re.findall(r"for name in ([\w ]+); do", script)[0].split()
    )
    assert used - set(outputs) == set(), f"deploy.sh reads outputs main.json lacks: {used - set(outputs)}"


FAKE_AZ = textwrap.dedent(
    """\
    #!/usr/bin/env bash
    echo "az $*" >> "$CALL_LOG"
    [[ -n "${FAIL_ALL:-}" ]] && exit 97
    case "$*" in
      "deployment group show"*functionAppName*) echo func-test ;;
      "deployment group show"*systemTopicName*) echo evgt-test ;;
      "deployment group show"*landingContainer*) echo datasets ;;
      "deployment group show"*) echo value ;;
      "functionapp keys list"*) echo key ;;
    esac
    exit 0
    """
)
FAKE_FUNC = textwrap.dedent(
    """\
    #!/usr/bin/env bash
    echo "func $* (cwd=$PWD)" >> "$CALL_LOG"
    [[ -n "${FAIL_ALL:-}" ]] && exit 97
    exit 0
    """
)


def run_deploy(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("az", FAKE_AZ), ("func", FAKE_FUNC)):
        exe = bin_dir / name
        exe.write_text(body)
        exe.chmod(0o755)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    log.write_text("")
    full_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "CALL_LOG": str(log),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path / "tmp"),
        **env,
    }
    proc = subprocess.run(
        ["bash", str(DEPLOY_SH), "rg-test", str(PARAMS_EXAMPLE)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    return proc, log.read_text().splitlines()


def step_indices(lines: list[str]) -> tuple[int, int, int]:
    def find(pred: Any) -> int:
        hits = [i for i, line in enumerate(lines) if pred(line)]
        assert len(hits) == 1, f"expected one matching line, got {hits} in:\n" + "\n".join(lines)
        return hits[0]

    main_i = find(lambda s: "deployment group create" in s and "/infra/main.json" in s)
    pub_i = find(lambda s: "func azure functionapp publish" in s)
    eg_i = find(lambda s: "deployment group create" in s and "/infra/eventgrid.json" in s)
    return main_i, pub_i, eg_i


def test_deploy_script_is_strict_bash() -> None:
    script = DEPLOY_SH.read_text(encoding="utf-8")
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script
    assert os.access(DEPLOY_SH, os.X_OK)


def test_deploy_dry_run_prints_the_three_steps_in_order(tmp_path: Path) -> None:
    proc, calls_made = run_deploy(tmp_path, DRY_RUN="1", FAIL_ALL="1", MGDC_APP_SECRET='s3cr"et')
    assert proc.returncode == 0, proc.stderr
    assert calls_made == [], "a dry run must not call az or func"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    main_i, pub_i, eg_i = step_indices(lines)
    assert main_i < pub_i < eg_i
    assert lines[pub_i].split()[-1] == "--python"
    assert lines[pub_i - 1] == f"+ cd {ROOT}", "publish runs from the repository root"
    assert f"@{PARAMS_EXAMPLE}" in lines[main_i]
    assert "s3cr" not in proc.stdout, "the secret must never be printed"


def test_deploy_runs_the_three_steps_in_order(tmp_path: Path) -> None:
    proc, calls_made = run_deploy(tmp_path, MGDC_APP_SECRET="s3cret")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    main_i, pub_i, eg_i = step_indices(calls_made)
    assert main_i < pub_i < eg_i
    assert calls_made[pub_i] == f"func azure functionapp publish func-test --python (cwd={ROOT})"
    eg = calls_made[eg_i]
    assert "functionAppName=func-test" in eg and "systemTopicName=evgt-test" in eg and "landingContainer=datasets" in eg
    assert "--resource-group rg-test" in calls_made[main_i]
    assert "s3cret" not in "\n".join(calls_made), "the secret goes through a file, not the command line"
    key_waits = [i for i, c in enumerate(calls_made) if c.startswith("az functionapp keys list")]
    assert key_waits and pub_i < key_waits[0] < eg_i
    assert not list((tmp_path / "tmp").iterdir()), "no secret file left behind"


def test_deploy_stops_when_a_step_fails(tmp_path: Path) -> None:
    proc, calls_made = run_deploy(tmp_path, FAIL_ALL="1")
    assert proc.returncode != 0
    assert len(calls_made) == 1 and "/infra/main.json" in calls_made[0]


def test_deploy_needs_two_arguments() -> None:
    proc = subprocess.run(["bash", str(DEPLOY_SH)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "usage" in proc.stderr
