"""A local HTTPS stand-in for the Azure Resource Manager pipeline-run API of Data Factory (2018-06-01).

The real ``azure-mgmt-datafactory`` client talks to it over HTTPS::

    with DataFactoryStandIn() as adf:
        client = DataFactoryManagementClient(adf.credential, "sub", **adf.client_kwargs())
        run = client.pipelines.create_run("rg", "factory", "ExportO365DataEvents", parameters={...})
        client.pipeline_runs.get("rg", "factory", run.run_id).status

What it speaks: ``createRun``, ``pipelineruns/{runId}`` (GET), ``pipelineruns/{runId}/cancel`` and a
basic ``queryPipelineRuns``, each with ``api-version=2018-06-01`` and a bearer token (401 otherwise,
as ARM does). Tests script what successive GETs of a run report, make createRun fail for chosen
parameters (one tenant failing while the others succeed) and inject throttling or outages.
Any subscription, resource group, factory and pipeline name is accepted.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .tls import HttpsStandIn, RecordedRequest, Reply, error_reply

__all__ = ["API_VERSION", "RUN_STATUSES", "TERMINAL_STATUSES", "DataFactoryStandIn", "PipelineRunRecord"]

API_VERSION = "2018-06-01"
RUN_STATUSES: tuple[str, ...] = ("Queued", "InProgress", "Succeeded", "Failed", "Canceling", "Cancelled")
TERMINAL_STATUSES = frozenset({"Succeeded", "Failed", "Cancelled"})

_FACTORY = (
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.DataFactory/factories/(?P<factory>[^/]+)"
)
_CREATE_RUN = re.compile(_FACTORY + r"/pipelines/(?P<pipeline>[^/]+)/createRun/?$", re.IGNORECASE)
_GET_RUN = re.compile(_FACTORY + r"/pipelineruns/(?P<run>[^/]+)/?$", re.IGNORECASE)
_CANCEL_RUN = re.compile(_FACTORY + r"/pipelineruns/(?P<run>[^/]+)/cancel/?$", re.IGNORECASE)
_QUERY_RUNS = re.compile(_FACTORY + r"/queryPipelineRuns/?$", re.IGNORECASE)

#: A scripted status: a status name, or ``(status, message)``.
ScriptedStatus = str | tuple[str, str]
#: What :meth:`DataFactoryStandIn.fail_pipeline_params` matches: a predicate over the createRun
#: parameters, or a dict whose items must all be present in them.
ParamsMatcher = Callable[[dict[str, Any]], bool] | Mapping[str, Any]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _now() -> datetime:
    return datetime.now(UTC)


def _normalise_script(statuses: Sequence[ScriptedStatus]) -> list[tuple[str, str]]:
    script: list[tuple[str, str]] = []
    for entry in statuses:
        status, message = (entry, "") if isinstance(entry, str) else entry
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown pipeline run status {status!r}; expected one of {RUN_STATUSES}")
        script.append((status, message))
    return script


@dataclass
class PipelineRunRecord:
    """One pipeline run as the stand-in keeps it (``parameters`` exactly as createRun sent them)."""

    run_id: str
    subscription_id: str
    resource_group: str
    factory: str
    pipeline_name: str
    parameters: dict[str, Any]
    query: dict[str, str]
    status: str
    message: str
    run_start: datetime
    last_updated: datetime
    run_end: datetime | None = None
    script: list[tuple[str, str]] = field(default_factory=list)
    cancel_requested: bool = False
    gets: int = 0

    def set_status(self, status: str, message: str = "") -> None:
        """Move the run to ``status`` (terminal statuses set ``runEnd``)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown pipeline run status {status!r}")
        now = _now()
        self.status, self.message, self.last_updated = status, message, now
        self.run_end = (self.run_end or now) if status in TERMINAL_STATUSES else None

    def to_json(self, base_id: str) -> dict[str, Any]:
        """The ``PipelineRun`` resource as ARM returns it."""
        body: dict[str, Any] = {
            "id": f"{base_id}/pipelineruns/{self.run_id}",
            "runId": self.run_id,
            "runGroupId": self.run_id,
            "isLatest": True,
            "pipelineName": self.pipeline_name,
            "parameters": {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.parameters.items()},
            "runDimensions": {},
            "invokedBy": {"name": "Manual", "id": uuid.uuid4().hex, "invokedByType": "Manual"},
            "runStart": _iso(self.run_start),
            "runEnd": _iso(self.run_end) if self.run_end else None,
            "durationInMs": (int((self.run_end - self.run_start).total_seconds() * 1000) if self.run_end else None),
            "status": self.status,
            "message": self.message,
            "lastUpdated": _iso(self.last_updated),
            "annotations": [],
        }
        return body


@dataclass
class _ParamFailure:
    matcher: ParamsMatcher
    status: int
    code: str
    message: str
    remaining: int | None

    def matches(self, params: dict[str, Any]) -> bool:
        if callable(self.matcher):
            return bool(self.matcher(params))
        return all(k in params and params[k] == v for k, v in self.matcher.items())


class DataFactoryStandIn(HttpsStandIn):
    """Data Factory pipeline runs over ARM on ``https://127.0.0.1:<port>`` for the real SDK client.

    :param initial_status: status of a new run until a script or :meth:`set_run_status` changes it.
    :param default_statuses: script applied to runs created without one (see :meth:`script_statuses`).
    :param token: the bearer token :attr:`credential` hands out.
    """

    bad_json_code = "InvalidRequestContent"

    def __init__(
        self,
        *,
        initial_status: str = "Queued",
        default_statuses: Sequence[ScriptedStatus] = (),
        token: str | None = None,
    ) -> None:
        super().__init__(token=token)
        if initial_status not in RUN_STATUSES:
            raise ValueError(f"unknown pipeline run status {initial_status!r}")
        self.initial_status = initial_status
        self.default_statuses = _normalise_script(default_statuses)
        self.runs: dict[str, PipelineRunRecord] = {}
        self._pending_scripts: list[list[tuple[str, str]]] = []
        self._param_failures: list[_ParamFailure] = []
        self._state_lock = threading.RLock()

    # -- helpers for tests ----------------------------------------------------------------------
    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``DataFactoryManagementClient`` to reach and trust this server."""
        return {"base_url": self.url, "connection_verify": self.cert_path}

    def set_run_status(self, run_id: str, status: str, message: str = "") -> None:
        """Set a run's status now (drops any script); KeyError for an unknown run."""
        with self._state_lock:
            run = self.runs[run_id]
            run.script.clear()
            run.set_status(status, message)

    def script_statuses(self, run_id: str | None, statuses: Sequence[ScriptedStatus]) -> None:
        """Statuses that successive GETs of a run report, the last one repeating.

        ``run_id=None`` scripts the next run to be created (calls queue up, one per new run).
        Entries are a status or ``(status, message)``.
        """
        script = _normalise_script(statuses)
        with self._state_lock:
            if run_id is None:
                self._pending_scripts.append(script)
            else:
                self.runs[run_id].script = script

    def fail_pipeline_params(
        self,
        match: ParamsMatcher,
        status: int = 400,
        code: str = "BadRequest",
        message: str = "The pipeline run could not be created (stand-in scripted failure).",
        *,
        times: int | None = None,
    ) -> None:
        """Make createRun fail with an ARM error when its parameters match.

        ``match`` is a predicate over the parameters or a dict of items that must all be present.
        Applies to every matching call, or to the next ``times`` of them. No ``Retry-After`` is
        sent (azure-core would retry any status carrying one).
        """
        with self._state_lock:
            self._param_failures.append(_ParamFailure(match, status, code, message, times))

    def clear_param_failures(self) -> None:
        """Forget every :meth:`fail_pipeline_params` rule."""
        with self._state_lock:
            self._param_failures.clear()

    # -- HTTP ----------------------------------------------------------------------------------
    def _unauthorized(self) -> Reply:
        reply = error_reply(
            401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
        )
        reply.headers["WWW-Authenticate"] = (
            'Bearer authorization_uri="https://login.windows.net/", error="invalid_token", '
            "error_description=\"The authentication failed because of missing 'Authorization' header.\""
        )
        return reply

    def _dispatch(self, request: RecordedRequest, headers: dict[str, str]) -> Reply:
        api = request.query.get("api-version")
        if api is None:
            return error_reply(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        if api != API_VERSION:
            return error_reply(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{api}' is invalid. The supported versions are '{API_VERSION}'.",
            )
        path, method = request.path, request.method
        if method == "POST" and (m := _CREATE_RUN.match(path)):
            return self._create_run(m, request)
        if method == "GET" and (m := _GET_RUN.match(path)):
            return self._get_run(m)
        if method == "POST" and (m := _CANCEL_RUN.match(path)):
            return self._cancel_run(m)
        if method == "POST" and (m := _QUERY_RUNS.match(path)):
            return self._query_runs(m, request.body)
        return error_reply(404, "InvalidResourceType", f"The stand-in does not implement {method} {path}.")

    @staticmethod
    def _base_id(m: re.Match[str]) -> str:
        return (
            f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}"
            f"/providers/Microsoft.DataFactory/factories/{m['factory']}"
        )

    def _find_run(self, m: re.Match[str]) -> PipelineRunRecord | None:
        run = self.runs.get(m["run"])
        if run is None:
            return None
        scope = (run.subscription_id, run.resource_group, run.factory)
        wanted = (m["sub"], m["rg"], m["factory"])
        return run if [x.lower() for x in scope] == [x.lower() for x in wanted] else None

    @staticmethod
    def _run_not_found(m: re.Match[str]) -> Reply:
        return error_reply(
            404,
            "ResourceNotFound",
            f"The pipeline run '{m['run']}' was not found in factory '{m['factory']}'.",
        )

    def _create_run(self, m: re.Match[str], request: RecordedRequest) -> Reply:
        body = request.body
        if body is None:
            body = {}
        if not isinstance(body, dict):
            return error_reply(400, "BadRequest", "The pipeline parameters must be a JSON object.")
        with self._state_lock:
            for rule in self._param_failures:
                if (rule.remaining is None or rule.remaining > 0) and rule.matches(body):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return error_reply(rule.status, rule.code, rule.message)
            now = _now()
            run = PipelineRunRecord(
                run_id=str(uuid.uuid4()),
                subscription_id=m["sub"],
                resource_group=m["rg"],
                factory=m["factory"],
                pipeline_name=m["pipeline"],
                parameters=dict(body),
                query={k: v for k, v in request.query.items() if k != "api-version"},
                status=self.initial_status,
                message="",
                run_start=now,
                last_updated=now,
            )
            if self._pending_scripts:
                run.script = self._pending_scripts.pop(0)
            else:
                run.script = list(self.default_statuses)
            self.runs[run.run_id] = run
            return Reply(200, {"runId": run.run_id})

    def _get_run(self, m: re.Match[str]) -> Reply:
        with self._state_lock:
            run = self._find_run(m)
            if run is None:
                return self._run_not_found(m)
            run.gets += 1
            if run.script:
                status, message = run.script[0]
                if len(run.script) > 1:
                    run.script.pop(0)
                run.set_status(status, message)
            return Reply(200, run.to_json(self._base_id(m)))

    def _cancel_run(self, m: re.Match[str]) -> Reply:
        with self._state_lock:
            run = self._find_run(m)
            if run is None:
                return self._run_not_found(m)
            run.cancel_requested = True
            if run.status not in TERMINAL_STATUSES:
                run.set_status("Canceling")
                run.script = [("Canceling", ""), ("Cancelled", "")]
            return Reply(200)

    def _query_runs(self, m: re.Match[str], body: Any) -> Reply:
        filters = body.get("filters", []) if isinstance(body, dict) else []
        fields = {"pipelinename": "pipeline_name", "status": "status", "rungroupid": "run_id"}
        with self._state_lock:
            found = []
            for run in self.runs.values():
                if (run.subscription_id, run.resource_group, run.factory) != (
                    m["sub"],
                    m["rg"],
                    m["factory"],
                ):
                    continue
                keep = True
                for flt in filters:
                    attr = fields.get(str(flt.get("operand", "")).lower())
                    if attr is None:
                        continue
                    value = getattr(run, attr)
                    values = list(flt.get("values") or [])
                    operator = str(flt.get("operator", "Equals")).lower()
                    inside = value in values
                    keep = keep and (inside if operator in ("equals", "in") else not inside)
                if keep:
                    found.append(run.to_json(self._base_id(m)))
        return Reply(200, {"value": found, "continuationToken": None})
