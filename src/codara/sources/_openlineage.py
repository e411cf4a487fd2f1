"""OpenLineage run events for Codara's reads, so that Marquez, DataHub or OpenMetadata show
which data each run used beside the rest of the company's lineage. Off by default.

``[lineage]`` in ``codara.toml`` (validated by :class:`LineageSettings` when the App is made)
turns it on. :class:`OpenLineageObserver` is a :class:`~codara.sources._registry.ReadObserver`:

- the OpenLineage *job* is the workflow (``namespace`` from the settings, the workflow's
  name); the *run* id is Codara's run id mapped to a UUID, because OpenLineage requires
  UUIDs: ``uuid5(NAMESPACE_URL, "codara:run:" + run_id)`` (:func:`run_uuid`), the same in
  every process, so the events of a run resumed by another worker join the same run;
- each journaled read batch gives one ``RUNNING`` event whose inputs are the datasets it
  touched (:func:`datasets_of`), with a ``schema`` facet (the columns read, where the
  source knows them), the ``dataQualityMetrics`` input facet (``rowCount``: the records
  accepted) and the custom input facet ``codara_read`` (what the engine judged: quarantined
  records per rule, freshness, data version, contract; its JSON schema is
  :data:`READ_FACET_SCHEMA`);
- the end of the run gives ``COMPLETE`` or ``FAIL``.

Only what the journal's lineage holds is sent, and less: never a parameter's value (it may
be personal), only the parameters' names; never a query's text; never a URL's user,
password or query string.

Export must never slow or fail a run: events go through a bounded queue to one background
thread that builds and sends them; a full queue drops the event (counted, one warning per
:data:`WARN_EVERY`), a failing receiver is logged and counted, and :meth:`close` (called
when the App closes) flushes what is queued for at most ``close_timeout`` seconds.
``openlineage`` is imported only when lineage is enabled, so ``codara --help`` and an App
without it do not pay for it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import re
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from codara.errors import ConfigError

if TYPE_CHECKING:
    from openlineage.client import OpenLineageClient

    from codara.sources._base import SourceConfig
    from codara.sources._registry import Sources

__all__ = [
    "PRODUCER",
    "READ_FACET_SCHEMA",
    "LineageSettings",
    "OpenLineageObserver",
    "datasets_of",
    "lineage_observer",
    "run_uuid",
]

log = logging.getLogger("codara.lineage")

PRODUCER = "https://github.com/codara/codara"
"""The ``producer`` of every event and facet: the project's repository (the spec asks for
a URI naming the software that produced the metadata)."""

READ_FACET_SCHEMA = (
    f"{PRODUCER}/blob/main/docs/openlineage/CodaraReadInputDatasetFacet.json"
    "#/$defs/CodaraReadInputDatasetFacet"
)
"""``_schemaURL`` of the ``codara_read`` facet: the JSON schema shipped in docs/."""

WARN_EVERY = 100
"""A dropped or failed event is logged at its first occurrence and then once per this many."""

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_RUN_PREFIX = "codara:run:"
_DEFAULT_FILE = "codara-openlineage.jsonl"
_END_STATES = {"completed": "COMPLETE", "failed": "FAIL", "cancelled": "ABORT"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433,
                  "oracle": 1521, "http": 80, "https": 443}  # fmt: skip


class LineageSettings(BaseModel):
    """``[lineage]``: where OpenLineage events go. Nothing is emitted unless ``enabled``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    namespace: str = Field(default="codara", min_length=1, max_length=200)
    """The OpenLineage job namespace the workflows are jobs in."""
    transport: Literal["file", "http"] = "file"
    path: Path | None = None
    """file: a file to append JSON lines to, or a directory (``codara-openlineage.jsonl``
    in it). Its directory must exist."""
    url: str | None = None
    """http: the receiver's base URL (Marquez: ``http://marquez:5000``)."""
    endpoint: str = "api/v1/lineage"
    """http: the path events are POSTed to, under ``url``."""
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME)
    """http: the environment variable holding the API key (sent as a Bearer token)."""
    timeout: float = Field(default=5.0, gt=0, le=300)
    """http: seconds to wait for the receiver per attempt."""
    retries: int = Field(default=2, ge=0, le=10)
    """http: further attempts on a refused connection or a 5xx."""
    queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    """Events waiting to be sent; past it new events are dropped (and counted)."""
    close_timeout: float = Field(default=10.0, ge=0, le=600)
    """Seconds the App's close waits for queued events to be sent."""

    @model_validator(mode="after")
    def _transport_has_its_target(self) -> LineageSettings:
        if not self.enabled:  # a table kept for later, switched off: nothing to reach
            return self
        if self.transport == "file" and self.path is None:
            raise ValueError('transport "file" needs path (a file or a directory)')
        if self.transport == "http":
            if self.url is None:
                raise ValueError('transport "http" needs url (e.g. http://localhost:5000)')
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("url must be http(s)://host[:port]")
            if parts.username or parts.password:
                raise ValueError("url must not hold credentials: use api_key_env")
        return self


def lineage_observer(
    section: Mapping[str, Any], sources: Sources | None = None, where: str = "the configuration"
) -> OpenLineageObserver | None:
    """The observer ``[lineage]`` asks for, None when lineage is off. ConfigError (at load,
    before any run) for a misspelt key, a missing target or a missing environment variable."""
    try:
        settings = LineageSettings.model_validate(dict(section))
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(table)"
            parts.append(f"{loc}: {err['msg']}")
        raise ConfigError(
            f"[lineage] in {where}: " + "; ".join(parts),
            hint="see docs/lineage.md for the keys of [lineage]",
        ) from exc
    if not settings.enabled:
        return None
    if settings.api_key_env is not None and not os.environ.get(settings.api_key_env):
        raise ConfigError(
            f"[lineage] in {where}: the environment variable {settings.api_key_env} "
            "(api_key_env) is not set",
            hint=f"export {settings.api_key_env} with the receiver's API key, or remove "
            "api_key_env if it needs none",
        )
    if settings.transport == "file":
        assert settings.path is not None
        folder = settings.path if settings.path.is_dir() else settings.path.parent
        if not folder.is_dir():
            raise ConfigError(
                f"[lineage] in {where}: path {str(settings.path)!r}: the directory "
                f"{str(folder)!r} does not exist",
                hint="create it, or point path at an existing directory",
            )
    return OpenLineageObserver(settings, sources)


def run_uuid(run_id: str) -> str:
    """The OpenLineage run id of Codara run ``run_id``: a UUID 5, the same everywhere."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, _RUN_PREFIX + run_id))


def _sql_namespace(config: SourceConfig) -> str:
    from sqlalchemy.engine import make_url

    secret = getattr(config, "url", None)
    env = getattr(config, "url_env", None)
    raw = secret.get_secret_value() if secret is not None else os.environ.get(env or "", "")
    try:
        url = make_url(raw)
    except Exception:  # a URL the source itself will refuse: still no secret in the name
        return "sql://unknown"
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        shown = database if database in ("", ":memory:") else os.path.abspath(database)
        return f"sqlite://{shown}"
    port = url.port or _DEFAULT_PORTS.get(backend)
    host = f"{url.host or 'localhost'}" + (f":{port}" if port else "")
    return f"{backend}://{host}/{url.database or ''}"


def _http_namespace(config: SourceConfig) -> str:
    parts = urlsplit(str(getattr(config, "base_url", "")))
    scheme = parts.scheme or "http"
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{parts.hostname or 'unknown'}" + (f":{port}" if port else "")


def datasets_of(
    kind: str, source: str, config: SourceConfig | None, touched: list[str], target: str
) -> list[tuple[str, str, list[str]]]:
    """``(namespace, name, columns)`` of each dataset a read touched.

    sql: ``backend://host:port/database`` (no user, password or query string), one dataset
    per table, with the columns read (``touched`` is ``table.column``); http: the base URL's
    ``scheme://host:port`` and the endpoint template; file: ``file://<root>`` and each path;
    any other kind: ``codara-source://<source name>`` and what the plan says it touched.
    """
    if kind == "sql" and config is not None:
        namespace = _sql_namespace(config)
        tables: dict[str, list[str]] = {}
        for item in touched:
            table, _, column = item.rpartition(".")
            tables.setdefault(table or column, []).extend([column] if table else [])
        return [(namespace, t, sorted(set(cols))) for t, cols in tables.items()]
    if kind == "http" and config is not None:
        namespace = _http_namespace(config)
        names = [re.sub(r"^[A-Z]+ ", "", item) for item in touched]
        return [(namespace, n, []) for n in dict.fromkeys(names)]
    if kind == "file" and config is not None:
        root = os.path.realpath(str(getattr(config, "root", ".")))
        return [(f"file://{root}", p, []) for p in dict.fromkeys(touched)]
    names = list(dict.fromkeys(touched)) or [target]
    return [(f"codara-source://{source}", n, []) for n in names]


class OpenLineageObserver:
    """Turns reads and run ends into OpenLineage run events, sent from a thread of its own
    (see the module); the engine's calls only put an item on a bounded queue."""

    def __init__(
        self,
        settings: LineageSettings,
        sources: Sources | None = None,
        *,
        client: OpenLineageClient | None = None,
    ) -> None:
        self.settings = settings
        self._sources = sources
        self._client = client if client is not None else _client(settings)
        self._queue: queue.Queue[tuple[str, str, str, Any, str] | None] = queue.Queue(
            settings.queue_size
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0
        """Events the transport accepted."""
        self.dropped = 0
        """Events dropped because the queue was full (or not sent before close's timeout)."""
        self.failed = 0
        """Events the transport could not send (the receiver down, a full disk)."""

    def __repr__(self) -> str:
        return f"OpenLineageObserver({self.settings.transport!r})"

    # -- the ReadObserver protocol: called on the event loop, must not block -------------------
    def read(self, run_id: str, workflow: str, lineage: Mapping[str, Any]) -> None:
        self._put(("read", run_id, workflow, dict(lineage), _now()))

    def run_ended(self, run_id: str, workflow: str, status: str) -> None:
        self._put(("end", run_id, workflow, status, _now()))

    def _put(self, item: tuple[str, str, str, Any, str]) -> None:
        self._start()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self.dropped += 1
                dropped = self.dropped
            if dropped % WARN_EVERY == 1:
                log.warning(
                    "OpenLineage export is behind: %d event(s) dropped so far (queue_size %d)",
                    dropped,
                    self.settings.queue_size,
                )

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._drain, name="codara-openlineage", daemon=True
                    )
                    self._thread.start()

    # -- the sending thread ---------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._client.emit(self._event(*item))
                self.sent += 1
            except Exception as exc:  # the receiver's trouble is logged, never the run's
                self.failed += 1
                if self.failed % WARN_EVERY == 1:
                    log.warning(
                        "OpenLineage event not sent to the %s transport (%s); %d failed so far",
                        self.settings.transport,
                        _why(exc),
                        self.failed,
                    )

    def _event(self, what: str, run_id: str, workflow: str, data: Any, at: str) -> Any:
        from openlineage.client.event_v2 import Job, Run, RunEvent, RunState

        job = Job(namespace=self.settings.namespace, name=workflow)
        run = Run(runId=run_uuid(run_id))
        if what == "end":
            state = RunState(_END_STATES.get(str(data), "OTHER"))
            return RunEvent(eventType=state, eventTime=at, run=run, job=job, producer=PRODUCER)
        return RunEvent(eventType=RunState.RUNNING, eventTime=at, run=run, job=job,
                        inputs=self._inputs(data), producer=PRODUCER)  # fmt: skip

    def _inputs(self, lineage: Mapping[str, Any]) -> list[Any]:
        from openlineage.client.event_v2 import InputDataset
        from openlineage.client.generated.data_quality_metrics_input_dataset import (
            DataQualityMetricsInputDatasetFacet,
        )
        from openlineage.client.generated.schema_dataset import (
            SchemaDatasetFacet,
            SchemaDatasetFacetFields,
        )

        name = str(lineage.get("source", ""))
        configs = self._sources.configs if self._sources is not None else {}
        found = datasets_of(str(lineage.get("kind", "")), name, configs.get(name),
                            [str(t) for t in lineage.get("touched") or []],
                            str(lineage.get("target", "")))  # fmt: skip
        inputs = []
        for namespace, dataset, columns in found:
            facets: dict[str, Any] = {}
            if columns:
                facets["schema"] = SchemaDatasetFacet(
                    fields=[SchemaDatasetFacetFields(name=c) for c in columns],
                    producer=PRODUCER,
                )
            input_facets: dict[str, Any] = {
                "dataQualityMetrics": DataQualityMetricsInputDatasetFacet(
                    columnMetrics={},
                    rowCount=int(lineage.get("accepted") or 0),
                    producer=PRODUCER,
                ),
                "codara_read": _read_facet(lineage),
            }
            inputs.append(InputDataset(namespace=namespace, name=dataset, facets=facets,
                                       inputFacets=input_facets))  # fmt: skip
        return inputs

    # -- closing --------------------------------------------------------------------------------
    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (for at most ``timeout`` seconds, ``close_timeout`` by
        default), then close the transport. What is left is counted as dropped."""
        wait = self.settings.close_timeout if timeout is None else timeout
        thread = self._thread
        if thread is not None and thread.is_alive():
            try:
                self._queue.put(None, timeout=max(wait, 0.001))
            except queue.Full:
                pass
            thread.join(wait)
            if thread.is_alive():  # still in a send: what waits is given up, then it stops
                left = 0
                while True:
                    try:
                        left += self._queue.get_nowait() is not None
                    except queue.Empty:
                        break
                self._queue.put_nowait(None)
                self.dropped += left
                log.warning(
                    "OpenLineage: %d event(s) not sent within close_timeout (%g s)", left, wait
                )
                return  # the thread may still be in a send: leave the transport to it
        self._thread = None
        try:
            self._client.close(timeout=max(wait, 0.0))
        except Exception as exc:
            log.warning("OpenLineage transport did not close cleanly: %s", type(exc).__name__)


def _read_facet(lineage: Mapping[str, Any]) -> Any:
    """The ``codara_read`` input facet: what the engine judged of the batch. Parameter
    names only, never their values."""
    import attr
    from openlineage.client.generated.base import InputDatasetFacet

    facet_cls = _facet_class(attr, InputDatasetFacet)
    params = lineage.get("params") or {}
    return facet_cls(
        source=str(lineage.get("source", "")),
        kind=str(lineage.get("kind", "")),
        batch=int(lineage.get("batch") or 0),
        seen=int(lineage.get("seen") or 0),
        accepted=int(lineage.get("accepted") or 0),
        quarantined=int(lineage.get("quarantined") or 0),
        byRule={str(k): int(v) for k, v in (lineage.get("by_rule") or {}).items()},
        stale=bool(lineage.get("stale")),
        age=lineage.get("age"),
        maxAge=lineage.get("max_age"),
        version=lineage.get("version"),
        contract=lineage.get("contract"),
        model=lineage.get("model"),
        parameters=sorted(str(k) for k in params),
        producer=PRODUCER,
    )


_FACET: list[type] = []


def _facet_class(attr: Any, base: type) -> type:
    """The attrs class of the ``codara_read`` facet, made once (openlineage is imported
    lazily, so the class cannot be defined at module level)."""
    if _FACET:
        return _FACET[0]

    @attr.define
    class CodaraReadInputDatasetFacet(base):  # type: ignore[misc]
        source: str
        kind: str
        batch: int
        seen: int
        accepted: int
        quarantined: int
        byRule: dict[str, int]  # camelCase, as the spec's facets are
        stale: bool
        age: float | None
        maxAge: float | None
        version: str | None
        contract: str | None
        model: str | None
        parameters: list[str]

        @staticmethod
        def _get_schema() -> str:
            return READ_FACET_SCHEMA

    _FACET.append(CodaraReadInputDatasetFacet)
    return CodaraReadInputDatasetFacet


def _why(exc: BaseException) -> str:
    """What went wrong, without the exception's text: a requests error's text holds the
    URL it tried, and a URL may carry a token in its query string."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return type(exc).__name__ + (f", HTTP {status}" if status is not None else "")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _client(settings: LineageSettings) -> OpenLineageClient:
    from openlineage.client import OpenLineageClient

    if settings.transport == "http":
        from openlineage.client.transport.http import (
            ApiKeyTokenProvider,
            HttpConfig,
            HttpTransport,
            TokenProvider,
        )

        assert settings.url is not None
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        auth = ApiKeyTokenProvider({"api_key": key}) if key else TokenProvider({})
        retry = {"total": settings.retries, "connect": settings.retries,
                 "read": settings.retries, "backoff_factor": 0.3,
                 "status_forcelist": [500, 502, 503, 504], "allowed_methods": ["POST"]}  # fmt: skip
        transport: Any = HttpTransport(HttpConfig(url=settings.url, endpoint=settings.endpoint,
                                                  timeout=settings.timeout, auth=auth,
                                                  retry=retry))  # fmt: skip
    else:
        from openlineage.client.transport.file import FileConfig, FileTransport

        assert settings.path is not None
        path = settings.path / _DEFAULT_FILE if settings.path.is_dir() else settings.path
        transport = FileTransport(FileConfig(log_file_path=str(path), append=True))
    # The transport is ours, and so are the events: the client's own extras (facets read
    # from the environment or git, filters, dataset renaming), which an openlineage.yml or
    # OPENLINEAGE__* variables could switch on, are pinned off; this config wins the merge.
    config = {
        "facets": {"environment_variables": [], "source_code_location": {"disabled": True}},
        "filters": [],
        "dataset": {"reducing_enabled": False},
    }
    return OpenLineageClient(transport=transport, config=config)
