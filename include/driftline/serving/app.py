"""The HTTP endpoints of ``driftline serve`` and how it is started.

==========================================  =================================================
``POST /v1/models/{model}/score``           one row -> score, version, arm
``POST /v1/models/{model}/score/batch``     ``{"rows": [...]}``, at most
                                            ``DRIFTLINE_SERVE_MAX_BATCH`` rows (more: 413)
``GET /v1/models``                          loaded versions, aliases, share, feature freshness
``GET /health``                             liveness; load failures and registry errors
``GET /ready``                              200 once every served model has a champion
``GET /metrics``                            Prometheus exposition
==========================================  =================================================

Every scored row, and every row that failed after validation, is handed to the prediction
log's background writer (:class:`driftline.predlog.Writer`); the request never waits on it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from driftline import predlog, training
from driftline.clock import utc
from driftline.errors import DriftlineError, Unavailable
from driftline.serving.features import OnlineFeatures, batch_model, request_model
from driftline.serving.metrics import ServiceMetrics
from driftline.serving.models import ModelHolder
from driftline.serving.routing import CANDIDATE, CHAMPION, arm_for
from driftline.settings import Settings, get_settings
from driftline.specs import ModelSpec

log = logging.getLogger(__name__)

# the registry cache of the open Feast store is reloaded this often by the poller (Feast's
# own reload, after cache_ttl_seconds, would otherwise happen inside a request)
REGISTRY_REFRESH_SECONDS = 30.0
NONE = "none"


class ServiceError(Exception):
    """A request that cannot be answered: HTTP status, reason (a metric label), message."""

    def __init__(self, status: int, reason: str, detail: Any) -> None:
        super().__init__(str(detail))
        self.status, self.reason, self.detail = status, reason, detail


@dataclass
class ServedModel:
    spec: ModelSpec
    features: OnlineFeatures
    holder: ModelHolder
    row_model: type[BaseModel]
    batch_model: type[BaseModel]
    writer: predlog.Writer
    freshness: dict[str, datetime | None] = field(default_factory=dict)
    seen_failures: dict[str, tuple[str, int]] = field(default_factory=dict)
    logged: tuple[int, int] = (0, 0)


class Service:
    """Every served model, the poller that keeps them current, the metrics."""

    def __init__(self, settings: Settings | None = None) -> None:
        from driftline.feature_store import get_store
        from driftline.specs import loadable_specs, model_names

        self.settings = settings or get_settings()
        self.metrics = ServiceMetrics()
        self.started = time.time()
        self.store = get_store(self.settings)
        self.store.refresh_registry()
        self._feast_lock = threading.Lock()
        self.models: dict[str, ServedModel] = {}
        specs = loadable_specs(self.settings.models_dir)
        self.broken: dict[str, str] = {
            name: f"model spec of {name} does not load; see the service log"
            for name in model_names(self.settings.models_dir)
            if name not in {spec.name for spec in specs}
        }
        for spec in specs:
            try:
                features = OnlineFeatures(spec, self.store, self._feast_lock)
            except DriftlineError as exc:
                log.error("%s is not served: %s", spec.name, exc)
                self.broken[spec.name] = str(exc)
                continue
            row = request_model(spec, features.entity_types)
            arrow = {int: pa.int64(), str: pa.string()}
            self.models[spec.name] = ServedModel(
                spec=spec,
                features=features,
                holder=ModelHolder(
                    spec.registered_model, self.settings, functools.partial(_warm, spec)
                ),
                row_model=row,
                batch_model=batch_model(row, spec),
                writer=predlog.Writer(
                    self.settings.offline_dir,
                    spec.name,
                    {k: arrow[t] for k, t in features.entity_types.items()},
                ),
            )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="serving-poller", daemon=True)
        self._last_registry_refresh = time.monotonic()

    # --- background ------------------------------------------------------------------------

    def start(self) -> None:
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join(timeout=30)
        for served in self.models.values():
            served.writer.close()
        self._observe_predlog()

    def _poll(self) -> None:
        for served in self.models.values():  # the first online read opens the connection
            with contextlib.suppress(Exception):
                served.features.read([{k: 0 for k in served.spec.entity_keys}], datetime.now(UTC))
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.settings.serve_poll_seconds)

    def poll_once(self) -> None:
        """Aliases, registry cache, freshness and metrics: everything kept off the request path."""
        for name, served in self.models.items():
            try:
                served.holder.refresh()
                served.freshness = served.features.freshness()
            except Exception:
                log.exception("%s: refresh failed; still serving what is loaded", name)
            self._observe_model(served)
        if time.monotonic() - self._last_registry_refresh > REGISTRY_REFRESH_SECONDS:
            try:
                self.store.refresh_registry()
                self._last_registry_refresh = time.monotonic()
            except Exception:
                log.exception("Feast registry refresh failed; serving from its cache")
        self._observe_predlog()

    def _observe_model(self, served: ServedModel) -> None:
        m, model = self.metrics, served.spec.name
        routing = served.holder.routing
        now = datetime.now(UTC)
        for alias, loaded in ((CHAMPION, routing.champion), (CANDIDATE, routing.candidate)):
            m.loaded_version.labels(model, alias).set(int(loaded.version) if loaded else 0)
            age = (now - loaded.created_at).total_seconds() if loaded else 0
            m.model_age.labels(model, alias).set(age)
            failure = served.holder.failures.get(alias)
            m.load_failing.labels(model, alias).set(1 if failure else 0)
            if failure is not None:
                seen = served.seen_failures.get(alias)
                if seen is None or seen[0] != failure.version or seen[1] < failure.attempts:
                    m.load_failures.labels(model, alias).inc()
                    served.seen_failures[alias] = (failure.version, failure.attempts)
        m.share.labels(model).set(routing.share)
        m.set_freshness(model, served.freshness)

    def _observe_predlog(self) -> None:
        for served in self.models.values():
            written, dropped = served.writer.written, served.writer.dropped
            self.metrics.predlog_written.labels(served.spec.name).inc(written - served.logged[0])
            self.metrics.predlog_dropped.labels(served.spec.name).inc(dropped - served.logged[1])
            served.logged = (written, dropped)

    # --- requests ----------------------------------------------------------------------------

    def get(self, model: str) -> ServedModel:
        if model in self.models:
            return self.models[model]
        if model in self.broken:
            self.metrics.errors.labels(model, NONE, NONE, "broken_model").inc()
            raise ServiceError(503, "broken_model", f"{model} is not served: {self.broken[model]}")
        self.metrics.errors.labels("unknown", NONE, NONE, "unknown_model").inc()
        known = ", ".join(sorted(self.models)) or "none"
        raise ServiceError(404, "unknown_model", f"unknown model {model!r}; served: {known}")

    def score(
        self, served: ServedModel, rows: list[BaseModel], endpoint: str, received: float
    ) -> list[dict[str, Any]]:
        """Score validated rows with one snapshot of the loaded versions; log every row."""
        spec, m = served.spec, self.metrics
        model = spec.name
        routing = served.holder.routing  # one snapshot for the whole request
        if routing.champion is None:
            m.errors.labels(model, NONE, NONE, "no_champion").inc()
            failure = served.holder.failures.get(CHAMPION)
            why = f"; version {failure.version} failed to load: {failure.error}" if failure else ""
            raise ServiceError(503, "no_champion", f"{model} has no champion loaded yet{why}")
        values = [row.model_dump() for row in rows]
        key = spec.entity_keys[0]
        if routing.candidate is not None:
            arms = [arm_for(model, value[key], routing.share) for value in values]
        else:
            arms = [CHAMPION] * len(values)
        loaded = {CHAMPION: routing.champion, CANDIDATE: routing.candidate}
        scored_at = datetime.now(UTC)
        scores = np.full(len(values), np.nan)
        absent: list[dict[str, str]] = [{} for _ in values]
        reason, error = "", ""
        try:
            online = served.features.read(values, scored_at)
            absent = online.absent
            for arm in sorted(set(arms)):
                index = [i for i, a in enumerate(arms) if a == arm]
                frame = online.columns if len(index) == len(values) else online.select(index)
                scores[index] = training.predict(loaded[arm].booster, frame, spec)
        except Unavailable as exc:
            reason, error = "features", str(exc)
        except Exception as exc:
            log.exception("%s: scoring failed", model)
            reason, error = "scoring", f"{type(exc).__name__}: {exc}"
        latency = time.perf_counter() - received
        status = "error" if reason else "ok"
        results, log_rows = [], []
        for i, value in enumerate(values):
            version = loaded[arms[i]].version
            request_id = uuid.uuid4().hex
            log_rows.append(
                {
                    "request_id": request_id,
                    "scored_at": scored_at,
                    "event_timestamp": utc(value.get("event_timestamp") or scored_at),
                    "transaction_id": value.get("transaction_id"),
                    "model": model,
                    "version": version,
                    "arm": arms[i],
                    "score": None if reason else float(scores[i]),
                    "latency_ms": latency * 1000,
                    "status": status,
                    "error": error or None,
                    **{k: value[k] for k in spec.entity_keys},
                }
            )
            results.append(
                {
                    "model": model,
                    "version": version,
                    "arm": arms[i],
                    "score": None if reason else float(scores[i]),
                    "request_id": request_id,
                    "transaction_id": value.get("transaction_id"),
                    "absent_features": absent[i],
                }
            )
        served.writer.add(log_rows)
        for arm in sorted(set(arms)):
            version = loaded[arm].version
            count = arms.count(arm)
            m.requests.labels(model, version, arm, endpoint, status).inc()
            m.rows.labels(model, version, arm, status).inc(count)
            m.latency.labels(model, version, arm, endpoint).observe(latency)
            if reason:
                m.errors.labels(model, version, arm, reason).inc()
        if reason:
            raise ServiceError(503 if reason == "features" else 500, reason, error)
        return results

    # --- reports -----------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        out = []
        for name, served in sorted(self.models.items()):
            out.append(
                {
                    "model": name,
                    **served.holder.describe(),
                    "feature_freshness": {
                        view: {
                            "materialized_until": end.isoformat() if end else None,
                            "age_seconds": round((now - end).total_seconds(), 1) if end else None,
                        }
                        for view, end in served.freshness.items()
                    },
                    "entity_keys": list(served.spec.entity_keys),
                    "request_schema": served.row_model.model_json_schema(),
                }
            )
        return out

    def health(self) -> dict[str, Any]:
        models = {}
        for name, served in sorted(self.models.items()):
            info = served.holder.describe()
            models[name] = {
                "champion": (info["loaded"][CHAMPION] or {}).get("version"),
                "candidate": (info["loaded"][CANDIDATE] or {}).get("version"),
                "load_failures": info["load_failures"],
                "registry_error": info["registry_error"],
                "rollout_share_problem": info["rollout_share_problem"],
            }
        degraded = self.broken or any(
            m["load_failures"] or m["registry_error"] or m["rollout_share_problem"]
            for m in models.values()
        )
        return {
            "status": "degraded" if degraded else "ok",
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 1),
            "models": models,
            "broken_models": self.broken,
        }

    def ready(self) -> tuple[bool, dict[str, Any]]:
        waiting = sorted(n for n, s in self.models.items() if s.holder.routing.champion is None)
        ok = bool(self.models) and not waiting
        return ok, {"ready": ok, "models": sorted(self.models), "without_champion": waiting}


def _warm(spec: ModelSpec, booster: Any) -> None:
    """Score one all-missing row: a booster's first prediction is slow, let no request pay."""
    training.predict(booster, {name: [None] for name in spec.feature_names}, spec)


def _field(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def invalid(exc: ValidationError) -> JSONResponse:
    """422 naming every field, its value and what is wrong with it."""
    errors = []
    for error in exc.errors(include_url=False):
        missing = error["type"] == "missing"
        errors.append(
            {
                "field": _field(tuple(error["loc"])),
                "value": None if missing else error.get("input"),
                "problem": error["msg"],
            }
        )
    text = "; ".join(
        f"{e['field']}: {e['problem']}"
        + ("" if e["problem"] == "Field required" else f" (got {json.dumps(e['value'])})")
        for e in errors
    )
    return JSONResponse(
        status_code=422,
        content={"detail": f"{len(errors)} invalid field(s): {text}", "errors": errors},
    )


def create_app(service: Service | None = None) -> FastAPI:
    """The FastAPI app (uvicorn calls this factory in every worker)."""
    service = service or Service()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()
            service.metrics.process_exit()

    app = FastAPI(title="driftline scoring service", lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    def _reject(served: ServedModel, reason: str) -> None:
        service.metrics.errors.labels(served.spec.name, NONE, NONE, reason).inc()

    @app.post("/v1/models/{model}/score")
    async def score(model: str, request: Request) -> Response:
        received = time.perf_counter()
        served = service.get(model)
        try:
            row = served.row_model.model_validate_json(await request.body())
        except ValidationError as exc:
            _reject(served, "invalid")
            return invalid(exc)
        # one row costs about a millisecond of CPU, less than a hop to the thread pool and
        # back; a batch (below) goes to the pool so it never holds up single requests
        results = service.score(served, [row], "score", received)
        return JSONResponse(results[0])

    @app.post("/v1/models/{model}/score/batch")
    async def score_batch(model: str, request: Request) -> Response:
        received = time.perf_counter()
        served = service.get(model)
        limit = service.settings.serve_max_batch
        try:
            payload = json.loads(await request.body())
        except ValueError as exc:
            _reject(served, "invalid")
            return JSONResponse(status_code=422, content={"detail": f"body is not JSON: {exc}"})
        rows = payload.get("rows") if isinstance(payload, dict) else None
        if isinstance(rows, list) and len(rows) > limit:
            _reject(served, "too_large")
            raise ServiceError(
                413,
                "too_large",
                f"batch of {len(rows)} rows exceeds the limit of {limit} rows "
                "(DRIFTLINE_SERVE_MAX_BATCH); split it",
            )
        try:
            batch = served.batch_model.model_validate(payload)
        except ValidationError as exc:
            _reject(served, "invalid")
            return invalid(exc)
        results = await run_in_threadpool(
            service.score,
            served,
            list(batch.rows),
            "batch",
            received,  # type: ignore[attr-defined]
        )
        return JSONResponse({"model": model, "results": results})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"models": service.describe(), "broken_models": service.broken}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok, body = service.ready()
        return JSONResponse(status_code=200 if ok else 503, content=body)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(content=body, media_type=content_type)

    return app


def run(host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    """``driftline serve``: uvicorn with ``workers`` processes, each its own :class:`Service`.

    Several workers share the port (uvicorn's supervisor) and their metrics (Prometheus
    multiprocess mode, in a directory made fresh here and removed on exit).
    """
    import uvicorn

    from driftline.stack import port_is_free

    settings = get_settings()
    host = host or settings.serve_host
    port = port or settings.serve_port
    workers = workers or settings.serve_workers
    if not port_is_free(port, host):
        raise DriftlineError(
            f"port {port} on {host} is already in use; free it or choose another with "
            f"DRIFTLINE_SERVE_PORT=<port> (or --port)"
        )
    metrics_dir = None
    if workers > 1:
        metrics_dir = settings.home / "run" / f"serve-metrics-{os.getpid()}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        # both names: prometheus_client reads the first, Feast's import sets its own
        # temporary directory under either when unset (feast/metrics.py)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROCESS_DIR"] = str(metrics_dir)
    try:
        uvicorn.run(
            "driftline.serving.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
