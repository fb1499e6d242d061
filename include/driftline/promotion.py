"""Move the champion alias — only by compare-and-set, always with an audit record.

A promotion is claimed in the monitoring store with one guarded update ("champion is still
version E, make it C"); exactly one of two racing promoters wins. Only the winner moves the
MLflow aliases (``previous_champion`` to the old champion, ``champion`` to the new one). If
moving them fails, the aliases and the claim are put back, so the alias moved completely
or not at all, and the audit says what happened. Every outcome — promoted, rejected, dry
run, aborted, failed — is an audit row and version tags.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from driftline import monitoring, registry
from driftline.errors import DriftlineError
from driftline.lineage import RunContext
from driftline.settings import Settings, get_settings

log = logging.getLogger(__name__)


class ChampionMoved(DriftlineError):
    """The champion changed between evaluation and promotion; nothing was promoted."""


@dataclass(frozen=True)
class PromotionResult:
    model: str
    action: str
    version: str
    champion_before: str | None
    champion_after: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _already_done(
    model: str, action: str, version: str, context: RunContext, url: str | None
) -> bool:
    return any(
        row["action"] == action
        and row["challenger_version"] == version
        and row["dag_id"] == context.dag_id
        and row["run_id"] == context.run_id
        for row in monitoring.audit_log(model, limit=200, url=url)
    )


def _sync_state_from_registry(model: str, settings: Settings) -> None:
    """First promotion after a fresh monitoring store: adopt MLflow's champion as the state."""
    url = settings.monitoring_db_url
    state = monitoring.read_state(model, url)
    if state.generation == 0:
        current = registry.alias_version(model, registry.CHAMPION, settings)
        if current is not None:
            monitoring.compare_and_set_champion(
                model=model, expected=None, new=current, actor="sync-from-registry", url=url
            )


def promote(
    model: str,
    version: str,
    *,
    expected_champion: str | None,
    context: RunContext,
    reasons: list[str],
    metrics: dict[str, Any] | None = None,
    actor: str | None = None,
    action: str = "promoted",
    settings: Settings | None = None,
) -> PromotionResult:
    """Make ``version`` the champion if the champion is still ``expected_champion``.

    Any failure (a registry that cannot be reached, say) leaves the aliases as they were and
    is recorded in the audit log as ``failed`` with the error, then raised, so Airflow retries.
    """
    settings = settings or get_settings()
    try:
        return _promote(
            model,
            version,
            expected_champion=expected_champion,
            context=context,
            reasons=reasons,
            metrics=metrics,
            actor=actor or context.triggered_by,
            action=action,
            settings=settings,
        )
    except (ChampionMoved, DriftlineError):
        raise
    except Exception as exc:
        _audit(
            model,
            "failed",
            context,
            settings.monitoring_db_url,
            actor=actor or context.triggered_by,
            challenger_version=version,
            champion_before=expected_champion,
            champion_after=expected_champion,
            reasons=[f"promotion failed, nothing moved: {type(exc).__name__}: {exc}", *reasons],
            metrics=metrics,
        )
        raise


def _audit(model: str, action: str, context: RunContext, url: str, **fields: Any) -> None:
    """One promotion_audit row, carrying the run's reason, dag id and run id."""
    monitoring.append_audit(
        model=model,
        action=action,
        reason=context.reason,
        dag_id=context.dag_id,
        run_id=context.run_id,
        url=url,
        **fields,
    )


def _promote(
    model: str,
    version: str,
    *,
    expected_champion: str | None,
    context: RunContext,
    reasons: list[str],
    metrics: dict[str, Any] | None,
    actor: str,
    action: str,
    settings: Settings,
) -> PromotionResult:
    url = settings.monitoring_db_url
    registry.version_info(model, version, settings)  # fails clearly for an unknown version

    current = registry.alias_version(model, registry.CHAMPION, settings)
    if current == version and _already_done(model, action, version, context, url):
        message = f"{model} version {version} is already champion by this run; nothing to do"
        log.info(message)
        return PromotionResult(model, "noop", version, current, current, message)

    _sync_state_from_registry(model, settings)
    won = current == expected_champion and monitoring.compare_and_set_champion(
        model=model, expected=expected_champion, new=version, actor=actor, url=url
    )
    if not won:
        state = monitoring.read_state(model, url)
        now_champion = current if current != expected_champion else state.champion_version
        message = (
            f"promotion of {model} version {version} aborted: the champion moved from "
            f"{_v(expected_champion)} to {_v(now_champion)} since evaluation "
            "(compare-and-set refused); re-run the evaluation against the new champion"
        )
        _audit(
            model,
            "aborted",
            context,
            url,
            actor=actor,
            challenger_version=version,
            champion_before=expected_champion,
            champion_after=now_champion,
            reasons=[message, *reasons],
            metrics=metrics,
        )
        registry.set_tags(
            model, version, {"decision": "aborted", "decision_reasons": message}, settings
        )
        raise ChampionMoved(message)

    mlflow_client = registry.client(settings)
    previous_alias = registry.alias_version(model, registry.PREVIOUS_CHAMPION, settings)
    try:
        if expected_champion is not None:
            mlflow_client.set_registered_model_alias(
                model, registry.PREVIOUS_CHAMPION, expected_champion
            )
        mlflow_client.set_registered_model_alias(model, registry.CHAMPION, version)
    except Exception:
        _restore(model, expected_champion, previous_alias, version, settings)
        raise

    now = datetime.now(UTC).isoformat()
    registry.set_tags(
        model,
        version,
        {
            "decision": action,
            "decision_reasons": " | ".join(reasons),
            "promoted_at": now,
            "promoted_by": actor,
            "promoted_in_run": context.key,
        },
        settings,
    )
    if expected_champion is not None:
        registry.set_tags(
            model, expected_champion, {"superseded_by": version, "superseded_at": now}, settings
        )
    _audit(
        model,
        action,
        context,
        url,
        actor=actor,
        challenger_version=version,
        champion_before=expected_champion,
        champion_after=version,
        reasons=reasons,
        metrics=metrics,
    )
    message = f"{model}: champion {_v(expected_champion)} -> v{version} ({action} by {actor})"
    log.info(message)
    return PromotionResult(model, action, version, expected_champion, version, message)


def _restore(
    model: str, champion: str | None, previous: str | None, claimed: str, settings: Settings
) -> None:
    """Undo a half-moved promotion: aliases back, then the claim back."""
    try:
        mlflow_client = registry.client(settings)
        if champion is None:
            mlflow_client.delete_registered_model_alias(model, registry.CHAMPION)
        else:
            mlflow_client.set_registered_model_alias(model, registry.CHAMPION, champion)
        if previous is None:
            mlflow_client.delete_registered_model_alias(model, registry.PREVIOUS_CHAMPION)
        else:
            mlflow_client.set_registered_model_alias(model, registry.PREVIOUS_CHAMPION, previous)
    except Exception:
        log.exception("could not put the aliases of %s back; the registry is unreachable", model)
    finally:
        monitoring.compare_and_set_champion(
            model=model,
            expected=claimed,
            new=champion,
            actor="rollback-of-failed-promotion",
            url=settings.monitoring_db_url,
        )


def record_rejection(
    model: str,
    version: str,
    *,
    context: RunContext,
    reasons: list[str],
    metrics: dict[str, Any] | None = None,
    champion: str | None = None,
    inconclusive: bool = False,
    settings: Settings | None = None,
) -> PromotionResult:
    """A challenger that stays a challenger keeps its reasons (tags and an audit row);
    ``inconclusive``: it was not rejected, there was no fair comparison to make."""
    settings = settings or get_settings()
    action = "dry_run" if context.dry_run else "inconclusive" if inconclusive else "rejected"
    registry.set_tags(
        model, version, {"decision": action, "decision_reasons": " | ".join(reasons)}, settings
    )
    if not _already_done(model, action, version, context, settings.monitoring_db_url):
        _audit(
            model,
            action,
            context,
            settings.monitoring_db_url,
            actor=context.triggered_by,
            challenger_version=version,
            champion_before=champion,
            champion_after=champion,
            reasons=reasons,
            metrics=metrics,
        )
    message = f"{model} version {version} {action.replace('_', ' ')}: " + "; ".join(reasons)
    log.info(message)
    return PromotionResult(model, action, version, champion, champion, message)


def _v(version: str | None) -> str:
    return "none" if version is None else f"v{version}"


def manual_promote(
    model: str, version: str, *, reason: str, actor: str, settings: Settings | None = None
) -> PromotionResult:
    """A human override: make ``version`` champion, through the same compare-and-set and audit.

    Refused, with the reason and nothing changed, for an unknown version, a version without
    a passed validation on record, or the current champion.
    """
    settings = settings or get_settings()
    if not reason.strip():
        raise DriftlineError("a manual promotion needs --reason: it goes into the audit log")
    info = registry.version_info(model, version, settings)
    if info.tags.get("validation") != "passed":
        raise DriftlineError(
            f"refusing to promote {model} version {version}: it has no passed data validation "
            f"on record (tag validation={info.tags.get('validation', 'missing')!r})"
        )
    current = registry.alias_version(model, registry.CHAMPION, settings)
    if current == version:
        raise DriftlineError(f"{model} version {version} is already the champion")
    context = RunContext(
        dag_id="cli",
        run_id=f"manual-promote-{datetime.now(UTC):%Y%m%dT%H%M%S}",
        run_type="manual",
        triggered_by=actor,
        reason=reason,
    )
    return promote(
        model,
        version,
        expected_champion=current,
        context=context,
        reasons=[f"manual promotion by {actor}: {reason}"],
        actor=actor,
        action="manual_promote",
        settings=settings,
    )


def rollback(
    model: str, *, reason: str, actor: str, settings: Settings | None = None
) -> PromotionResult:
    """Put ``previous_champion`` back as champion (compare-and-set, audited)."""
    settings = settings or get_settings()
    if not reason.strip():
        raise DriftlineError("a rollback needs --reason: it goes into the audit log")
    previous = registry.alias_version(model, registry.PREVIOUS_CHAMPION, settings)
    if previous is None:
        raise DriftlineError(f"{model} has no previous_champion to roll back to")
    current = registry.alias_version(model, registry.CHAMPION, settings)
    context = RunContext(
        dag_id="cli",
        run_id=f"rollback-{datetime.now(UTC):%Y%m%dT%H%M%S}",
        run_type="manual",
        triggered_by=actor,
        reason=reason,
    )
    return promote(
        model,
        previous,
        expected_champion=current,
        context=context,
        reasons=[f"rollback by {actor}: {reason}"],
        actor=actor,
        action="rollback",
        settings=settings,
    )
