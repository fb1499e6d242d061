"""The versions a model's aliases point at, loaded and swapped off the request path.

:meth:`ModelHolder.refresh` (called by the service's poller every
``DRIFTLINE_SERVE_POLL_SECONDS``) reads the ``champion`` and ``candidate`` aliases and the
candidate's ``rollout_share`` tag. A version not loaded yet is loaded in the poller's thread,
then the holder's :class:`Routing` — an immutable snapshot — is replaced by a new one in a
single assignment. A request takes the snapshot once and is scored by exactly what it holds.

A version that fails to load never replaces the one serving: the champion stays, a candidate
gets no traffic, the failure is kept (shown by ``/health`` and counted in the metrics) and
the load is retried after :data:`RETRY_FAILED_SECONDS`. An unreachable registry keeps the
current snapshot and is reported the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from driftline import registry
from driftline.errors import DriftlineError
from driftline.serving.routing import CANDIDATE, CHAMPION, ROLLOUT_SHARE_TAG, parse_share
from driftline.settings import Settings

log = logging.getLogger(__name__)

RETRY_FAILED_SECONDS = 30.0


@dataclass(frozen=True)
class Loaded:
    """One registered version in memory."""

    version: str
    booster: Any
    created_at: datetime
    loaded_at: datetime
    load_seconds: float


@dataclass(frozen=True)
class Routing:
    """What serves now: replaced whole, never mutated."""

    champion: Loaded | None = None
    candidate: Loaded | None = None
    share: float = 0.0


@dataclass(frozen=True)
class LoadFailure:
    alias: str
    version: str
    error: str
    at: datetime
    attempts: int = 1


@dataclass
class AliasState:
    """What the registry says, for reporting (the loaded snapshot may lag or differ)."""

    versions: dict[str, str | None] = field(default_factory=dict)
    share_problem: str | None = None
    registry_error: str | None = None
    checked_at: datetime | None = None


class ModelHolder:
    def __init__(
        self, model: str, settings: Settings, warm: Callable[[Any], None] = lambda _: None
    ) -> None:
        self.model = model
        self.settings = settings
        # scores one row with a freshly loaded booster before it serves (first calls are slow)
        self.warm = warm
        self.routing = Routing()
        self.failures: dict[str, LoadFailure] = {}
        self.aliases = AliasState()
        self.loads = 0  # versions loaded, for the metrics
        self._lock = threading.Lock()  # one refresh at a time

    def refresh(self) -> None:
        with self._lock:
            try:
                found = {alias: self._alias(alias) for alias in (CHAMPION, CANDIDATE)}
            except Exception as exc:  # registry unreachable: keep serving what is loaded
                self.aliases.registry_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("%s: cannot read aliases: %s", self.model, exc)
                return
            self.aliases.registry_error = None
            self.aliases.checked_at = datetime.now(UTC)
            self.aliases.versions = {
                a: (str(mv.version) if mv else None) for a, mv in found.items()
            }
            current = self.routing
            champion = self._resolve(CHAMPION, found[CHAMPION], current.champion)
            if found[CHAMPION] is None:
                champion = current.champion  # alias removed: keep the last one serving
            candidate, share = None, 0.0
            self.aliases.share_problem = None
            if found[CANDIDATE] is not None:
                mv = found[CANDIDATE]
                candidate = self._resolve(CANDIDATE, mv, current.candidate)
                try:
                    share = parse_share(
                        mv.tags.get(ROLLOUT_SHARE_TAG), model=self.model, version=mv.version
                    )
                except DriftlineError as exc:
                    self.aliases.share_problem = str(exc)
                if candidate is None or candidate.version != str(mv.version):
                    candidate, share = None, 0.0  # not loadable (yet): all to the champion
            else:
                self.failures.pop(CANDIDATE, None)
            fresh = Routing(champion=champion, candidate=candidate, share=share)
            if fresh != current:
                self.routing = fresh  # the atomic swap
                log.info(
                    "%s now serves champion v%s, candidate %s (share %.3f)",
                    self.model,
                    champion.version if champion else None,
                    f"v{candidate.version}" if candidate else None,
                    share,
                )

    def _alias(self, alias: str) -> Any:
        """The model version ``alias`` points at (with its tags), or None."""
        version = registry.alias_version(self.model, alias, self.settings)
        if version is None:
            return None
        with registry.reaching(self.settings):
            return registry.client(self.settings).get_model_version(self.model, version)

    def _resolve(self, alias: str, mv: Any, loaded: Loaded | None) -> Loaded | None:
        """The loaded version ``mv`` names: kept, loaded now, or (failing) the one before."""
        if mv is None:
            return None
        version = str(mv.version)
        if loaded is not None and loaded.version == version:
            self.failures.pop(alias, None)
            return loaded
        other = self.routing.champion if alias == CANDIDATE else self.routing.candidate
        if other is not None and other.version == version:  # promoted candidate, same booster
            self.failures.pop(alias, None)
            return other
        failure = self.failures.get(alias)
        if (
            failure is not None
            and failure.version == version
            and (datetime.now(UTC) - failure.at).total_seconds() < RETRY_FAILED_SECONDS
        ):
            return loaded
        started = time.perf_counter()
        try:
            booster = registry.load_booster(self.model, version, self.settings)
            # one row per request: OpenMP threads cost more than they save (predictions are
            # the same whatever the thread count)
            booster.set_param({"nthread": 1})
            self.warm(booster)
        except Exception as exc:
            attempts = failure.attempts + 1 if failure and failure.version == version else 1
            self.failures[alias] = LoadFailure(
                alias=alias,
                version=version,
                error=f"{type(exc).__name__}: {exc}"[:500],
                at=datetime.now(UTC),
                attempts=attempts,
            )
            log.error(
                "%s: version %s (alias %s) failed to load; still serving %s: %s",
                self.model,
                version,
                alias,
                f"v{loaded.version}" if loaded else "nothing",
                exc,
            )
            return loaded
        self.failures.pop(alias, None)
        self.loads += 1
        created = datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, tz=UTC)
        return Loaded(
            version=version,
            booster=booster,
            created_at=created,
            loaded_at=datetime.now(UTC),
            load_seconds=round(time.perf_counter() - started, 3),
        )

    def describe(self) -> dict[str, Any]:
        routing = self.routing
        now = datetime.now(UTC)

        def one(loaded: Loaded | None) -> dict[str, Any] | None:
            if loaded is None:
                return None
            return {
                "version": loaded.version,
                "created_at": loaded.created_at.isoformat(),
                "age_seconds": round((now - loaded.created_at).total_seconds(), 1),
                "loaded_at": loaded.loaded_at.isoformat(),
                "load_seconds": loaded.load_seconds,
            }

        return {
            "loaded": {CHAMPION: one(routing.champion), CANDIDATE: one(routing.candidate)},
            "rollout_share": routing.share,
            "registry_aliases": dict(self.aliases.versions),
            "registry_checked_at": (
                self.aliases.checked_at.isoformat() if self.aliases.checked_at else None
            ),
            "registry_error": self.aliases.registry_error,
            "rollout_share_problem": self.aliases.share_problem,
            "load_failures": [
                {**asdict(f), "at": f.at.isoformat()} for f in self.failures.values()
            ],
        }
