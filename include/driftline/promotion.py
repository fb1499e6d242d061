"""Move the champion alias — by compare-and-set, as an intent whoever comes next can finish.

A champion change spans two stores: the monitoring store (``model_state``, the
compare-and-set row) and MLflow's aliases (what serving reads). It is done in three steps:

1. **claim and intent** — one transaction: the guarded update "champion is still E, make it
   C" and a ``promotion_intents`` row (from E to C, who, when, a lease). Exactly one of two
   racing promoters wins; nobody claims while another change of the model is pending.
2. **move the aliases** — ``previous_champion`` first, then ``champion``.
3. **done** — one transaction: the intent marked done and the audit row written.

A promoter can die anywhere (SIGKILL, OOM, Airflow's SIGTERM on timeout: no clean-up
runs). Whoever comes next — the task's retry, the next promotion, a rollback, the start of
every retrain, ``driftline reconcile`` — *settles* the model: a pending intent older than
its lease (or left by the same run) is resolved by reading MLflow's ``champion`` alias. If
MLflow already serves C the intent is finished; if it still serves E it is undone (the
claim given back, ``previous_champion`` restored); if it serves something else (an alias
moved by hand) the store follows MLflow. With nothing pending, a store that disagrees with
MLflow adopts MLflow's champion. Every resolution is an audit row whose ``champion_after``
is the version MLflow serves, so the audit always ends by saying what is served.

Rollback walks the champion history (the done intents) backwards: the first earlier
champion that was not itself rolled back. A second rollback goes one further back, or is
refused with the reason; it never re-serves a version that was rolled back.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from driftline import monitoring, registry
from driftline.errors import Conflict, DriftlineError, InvalidInput, Unavailable
from driftline.lineage import RunContext
from driftline.settings import Settings, get_settings

log = logging.getLogger(__name__)

# How long a pending intent belongs to its promoter before others may finish or undo it.
# It must exceed the longest an alias move can take (MLflow's client gives up after ~10 s
# of retries, each request times out after MLFLOW_HTTP_REQUEST_TIMEOUT).
LEASE_VARIABLE = "DRIFTLINE_PROMOTION_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 300.0
# Fault drills only: seconds to sleep after the intent is recorded, before the aliases move,
# so a test can kill the promoter or stop MLflow at exactly that point. Unset in production.
FAULT_PAUSE_VARIABLE = "DRIFTLINE_FAULT_PAUSE_AFTER_INTENT"

MOVES_CHAMPION = ("promoted", "manual_promote", "rollback", "adopted")


class ChampionMoved(Conflict):
    """The champion changed between evaluation and promotion; nothing was promoted."""


class PromotionInFlight(Conflict):
    """Another change of this model's champion is pending and its lease has not expired.

    Retrying after the lease helps (its promoter finishes, or the next caller resolves it).
    """

    retryable = True


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


@dataclass(frozen=True)
class Settled:
    """What settling one pending intent (or a disagreement) did."""

    model: str
    outcome: str  # finished | undone | followed_mlflow | adopted | in_flight | in_sync | raced
    served: str | None
    message: str


def lease_seconds() -> float:
    raw = os.environ.get(LEASE_VARIABLE)
    if raw is None:
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{LEASE_VARIABLE}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise InvalidInput(f"{LEASE_VARIABLE}={raw!r} must be zero or more seconds")
    return value


def _v(version: str | None) -> str:
    return "none" if version is None else f"v{version}"


def _now() -> datetime:
    return datetime.now(UTC)


# --- settling: finish or undo what a dead promoter left -------------------------------------


def settle(
    model: str,
    *,
    actor: str,
    run_key: str | None = None,
    stale_after: float | None = None,
    settings: Settings | None = None,
) -> list[Settled]:
    """Resolve the model's stale pending intents, then make the store agree with MLflow.

    An intent is stale when its lease has expired, or — with ``stale_after`` seconds — when
    it is older than that; an intent of ``run_key`` (the same run, retried) is resolved at
    once, since its previous attempt is over. Intents still within their lease are reported
    as ``in_flight`` and left alone. Raises ``Unavailable`` when MLflow or the store cannot
    be read; nothing is guessed.
    """
    settings = settings or get_settings()
    url = settings.monitoring_db_url
    now = _now()
    results = []
    for intent in monitoring.pending_intents(model, url=url):
        own = run_key is not None and f"{intent['dag_id']}/{intent['run_id']}" == run_key
        expires = (
            intent["created_at"] + timedelta(seconds=stale_after)
            if stale_after is not None
            else intent["lease_until"]
        )
        if not own and expires > now:
            results.append(
                Settled(
                    model,
                    "in_flight",
                    None,
                    f"{model}: {intent['action']} {_v(intent['from_version'])} -> "
                    f"{_v(intent['to_version'])} by {intent['actor']} is in flight since "
                    f"{intent['created_at']:%Y-%m-%d %H:%M:%S} UTC; its lease ends "
                    f"{expires:%H:%M:%S} UTC",
                )
            )
            continue
        results.append(_resolve(intent, by=actor, settings=settings))
    if not any(r.outcome == "in_flight" for r in results):
        results.append(_agree(model, actor=actor, settings=settings))
    for result in results:
        if result.outcome not in ("in_sync", "in_flight"):
            log.warning("%s", result.message)
    return results


def _resolve(
    intent: dict[str, Any], *, by: str, settings: Settings, failure: str | None = None
) -> Settled:
    """Finish or undo one pending intent by what MLflow's champion alias says."""
    model, url = intent["model"], settings.monitoring_db_url
    frm, to = intent["from_version"], intent["to_version"]
    served = registry.alias_version(model, registry.CHAMPION, settings)
    previous = registry.alias_version(model, registry.PREVIOUS_CHAMPION, settings)
    audit = {
        "model": model,
        "actor": intent["actor"],
        "challenger_version": to,
        "champion_before": frm,
        "champion_after": served,
        "metrics": intent["metrics"],
        "reason": intent["reason"],
        "dag_id": intent["dag_id"],
        "run_id": intent["run_id"],
    }
    why = f"{failure}; " if failure else ""
    if served == to:
        if previous != intent["previous_after"]:
            registry.set_alias(
                model, registry.PREVIOUS_CHAMPION, intent["previous_after"], settings
            )
        _tag_champion(intent, settings)
        outcome = "finished"
        message = (
            f"{model}: {intent['action']} {_v(frm)} -> {_v(to)} finished by {by}: "
            f"{why}MLflow already serves {_v(to)}"
        )
        status, move = "done", {}
        audit.update(action=intent["action"], reasons=[message, *intent["reasons"]])
    elif served == frm:
        if previous != intent["previous_before"]:
            registry.set_alias(
                model, registry.PREVIOUS_CHAMPION, intent["previous_before"], settings
            )
        outcome = "undone"
        message = (
            f"{model}: {intent['action']} {_v(frm)} -> {_v(to)} undone by {by}: {why}"
            f"MLflow's champion never moved, {_v(frm)} is still served"
        )
        status, move = "undone", {"move_store": True, "store_from": to, "store_to": frm}
        audit.update(action="undone", reasons=[message, *intent["reasons"]])
    else:
        outcome = "followed_mlflow"
        message = (
            f"{model}: {intent['action']} {_v(frm)} -> {_v(to)} abandoned by {by}: MLflow "
            f"serves {_v(served)}, set outside driftline; the monitoring store follows MLflow"
        )
        status, move = "undone", {"move_store": True, "store_from": to, "store_to": served}
        audit.update(action="reconciled", reasons=[message, *intent["reasons"]])
    if not monitoring.resolve_intent(
        intent["id"],
        status=status,
        resolved_by=by,
        resolution=message,
        audit=audit,
        url=url,
        **move,
    ):
        return Settled(
            model, "raced", served, f"{model}: intent {intent['id']} resolved by another"
        )
    return Settled(model, outcome, served, message)


def _agree(model: str, *, actor: str, settings: Settings) -> Settled:
    """Nothing pending: if the store names another champion than MLflow serves, adopt MLflow's."""
    url = settings.monitoring_db_url
    stored = monitoring.read_state(model, url).champion_version
    served = registry.alias_version(model, registry.CHAMPION, settings)
    if stored == served:
        return Settled(model, "in_sync", served, f"{model}: in sync, {_v(served)} is champion")
    message = (
        f"{model}: the monitoring store named {_v(stored)} but MLflow serves {_v(served)}; "
        f"the store follows MLflow (settled by {actor})"
    )
    adopted = monitoring.adopt_champion(
        model=model,
        expected=stored,
        new=served,
        actor=actor,
        resolution=message,
        audit={
            "model": model,
            "action": "reconciled",
            "actor": actor,
            "challenger_version": served,
            "champion_before": stored,
            "champion_after": served,
            "reasons": [message],
        },
        url=url,
    )
    if not adopted:
        return Settled(model, "raced", served, f"{model}: the state moved while settling")
    return Settled(model, "adopted", served, message)


def _in_flight(results: list[Settled]) -> None:
    busy = [r.message for r in results if r.outcome == "in_flight"]
    if busy:
        raise PromotionInFlight(
            "; ".join(busy) + " — retry after the lease, or `driftline reconcile "
            "--lease-seconds 0` once you know its promoter is dead"
        )


def reconcile(
    models: list[str],
    *,
    actor: str,
    stale_after: float | None = None,
    settings: Settings | None = None,
) -> list[Settled]:
    """`driftline reconcile`: settle every model; what is still in flight is reported."""
    settings = settings or get_settings()
    results = []
    for model in models:
        results.extend(settle(model, actor=actor, stale_after=stale_after, settings=settings))
    return results


# --- promoting ------------------------------------------------------------------------------


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
    previous_after: str | None = None,
    settings: Settings | None = None,
) -> PromotionResult:
    """Make ``version`` the champion if MLflow still serves ``expected_champion``.

    ``previous_champion`` becomes the old champion (a rollback passes where the next
    rollback would go as ``previous_after`` instead). Raises ``ChampionMoved`` when the
    champion moved since evaluation, ``PromotionInFlight`` when another change is pending,
    ``Unavailable`` when MLflow or the store cannot be reached — after which the intent, if
    one was recorded, is finished or undone by whoever comes next.
    """
    settings = settings or get_settings()
    actor = actor or context.triggered_by
    claimed: list[int] = []
    try:
        return _promote(
            model,
            version,
            expected_champion=expected_champion,
            context=context,
            reasons=reasons,
            metrics=metrics,
            actor=actor,
            action=action,
            previous_after=previous_after,
            settings=settings,
            claimed=claimed,
        )
    except Unavailable as exc:
        if not claimed:  # failed before the claim: nothing moved, say so
            _audit_failure(
                model, version, expected_champion, context, actor, reasons, exc, settings
            )
        raise


def _audit_failure(
    model: str,
    version: str,
    expected: str | None,
    context: RunContext,
    actor: str,
    reasons: list[str],
    exc: Exception,
    settings: Settings,
) -> None:
    try:
        monitoring.append_audit(
            model=model,
            action="failed",
            actor=actor,
            challenger_version=version,
            champion_before=expected,
            champion_after=monitoring.read_state(
                model, settings.monitoring_db_url
            ).champion_version,
            reasons=[f"promotion failed before anything moved: {exc}", *reasons],
            reason=context.reason,
            dag_id=context.dag_id,
            run_id=context.run_id,
            url=settings.monitoring_db_url,
        )
    except Unavailable:
        log.warning("%s: could not audit the failed promotion; the store is unreachable", model)


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
    previous_after: str | None,
    settings: Settings,
    claimed: list[int],
) -> PromotionResult:
    url = settings.monitoring_db_url
    registry.version_info(model, version, settings)  # fails clearly for an unknown version
    busy = [
        r.message
        for r in settle(model, actor=actor, run_key=context.key, settings=settings)
        if r.outcome == "in_flight"
    ]
    if busy:
        message = (
            f"promotion of {model} version {version} aborted: another change of the champion "
            f"holds the claim ({'; '.join(busy)}; compare-and-set refused); retry after it ends"
        )
        _audit_aborted(
            model,
            version,
            expected_champion,
            None,
            context,
            actor,
            message,
            reasons,
            metrics,
            settings,
        )
        raise PromotionInFlight(message)

    current = registry.alias_version(model, registry.CHAMPION, settings)
    if current == version and _already_done(model, action, version, context, url):
        message = f"{model} version {version} is already champion by this run; nothing to do"
        log.info(message)
        return PromotionResult(model, "noop", version, current, current, message)
    previous_before = registry.alias_version(model, registry.PREVIOUS_CHAMPION, settings)
    if action != "rollback":
        previous_after = expected_champion if expected_champion is not None else previous_before

    intent_id = None
    if current == expected_champion:
        intent_id = monitoring.begin_promotion(
            model=model,
            expected=expected_champion,
            new=version,
            action=action,
            actor=actor,
            previous_before=previous_before,
            previous_after=previous_after,
            lease_seconds=lease_seconds(),
            reason=context.reason,
            reasons=reasons,
            metrics=metrics,
            dag_id=context.dag_id,
            run_id=context.run_id,
            url=url,
        )
    if intent_id is not None:
        claimed.append(intent_id)
    else:
        _abort(
            model, version, expected_champion, current, context, actor, reasons, metrics, settings
        )

    fault_pause()
    intent = next(i for i in monitoring.pending_intents(model, url=url) if i["id"] == intent_id)
    try:
        registry.set_alias(model, registry.PREVIOUS_CHAMPION, previous_after, settings)
        registry.set_alias(model, registry.CHAMPION, version, settings)
    except Exception as exc:
        failure = f"moving the aliases failed: {type(exc).__name__}: {exc}"
        try:
            # MLflow may have applied a move whose answer was lost: read what it serves
            settled = _resolve(
                intent,
                by=f"{actor} (after a failed alias move)",
                settings=settings,
                failure=failure,
            )
        except DriftlineError as unreadable:
            log.error(
                "%s: %s; MLflow cannot be read either (%s): the intent stays pending and the "
                "retry, the next promotion or `driftline reconcile` resolves it",
                model,
                failure,
                unreadable,
            )
            raise
        if settled.outcome != "finished":
            raise
        return PromotionResult(model, action, version, expected_champion, version, settled.message)

    _tag_champion(intent, settings)
    message = f"{model}: champion {_v(expected_champion)} -> v{version} ({action} by {actor})"
    done = monitoring.resolve_intent(
        intent_id,
        status="done",
        resolved_by=actor,
        resolution=message,
        audit={
            "model": model,
            "action": action,
            "actor": actor,
            "challenger_version": version,
            "champion_before": expected_champion,
            "champion_after": version,
            "reasons": reasons,
            "metrics": metrics,
            "reason": context.reason,
            "dag_id": context.dag_id,
            "run_id": context.run_id,
        },
        url=url,
    )
    if not done:
        served = registry.alias_version(model, registry.CHAMPION, settings)
        raise Conflict(
            f"{model}: the promotion to v{version} outlived its lease and was resolved by "
            f"another caller meanwhile; MLflow serves {_v(served)} (see the audit log)"
        )
    log.info(message)
    return PromotionResult(model, action, version, expected_champion, version, message)


def _abort(
    model: str,
    version: str,
    expected: str | None,
    current: str | None,
    context: RunContext,
    actor: str,
    reasons: list[str],
    metrics: dict[str, Any] | None,
    settings: Settings,
) -> NoReturn:
    url = settings.monitoring_db_url
    pending = monitoring.pending_intents(model, url=url)
    if pending and current == expected:  # a racing claim won between our read and our claim
        now_champion = pending[0]["to_version"]
    else:
        now_champion = (
            current if current != expected else monitoring.read_state(model, url).champion_version
        )
    message = (
        f"promotion of {model} version {version} aborted: the champion moved from "
        f"{_v(expected)} to {_v(now_champion)} since evaluation "
        "(compare-and-set refused); re-run the evaluation against the new champion"
    )
    _audit_aborted(
        model, version, expected, current, context, actor, message, reasons, metrics, settings
    )
    raise ChampionMoved(message)


def _audit_aborted(
    model: str,
    version: str,
    expected: str | None,
    served: str | None,
    context: RunContext,
    actor: str,
    message: str,
    reasons: list[str],
    metrics: dict[str, Any] | None,
    settings: Settings,
) -> None:
    monitoring.append_audit(
        model=model,
        action="aborted",
        actor=actor,
        challenger_version=version,
        champion_before=expected,
        champion_after=served,
        reasons=[message, *reasons],
        metrics=metrics,
        reason=context.reason,
        dag_id=context.dag_id,
        run_id=context.run_id,
        url=settings.monitoring_db_url,
    )
    registry.set_tags(
        model, version, {"decision": "aborted", "decision_reasons": message}, settings
    )


def fault_pause() -> None:
    """Fault drills only: sleep between an intent and the MLflow change it announces."""
    pause = os.environ.get(FAULT_PAUSE_VARIABLE)
    if pause:
        log.warning(
            "%s=%s: pausing between the claim and the alias moves", FAULT_PAUSE_VARIABLE, pause
        )
        time.sleep(float(pause))


def _tag_champion(intent: dict[str, Any], settings: Settings) -> None:
    """The version tags of a completed champion change (idempotent: safe to repeat)."""
    model, version, frm = intent["model"], intent["to_version"], intent["from_version"]
    now = _now().isoformat()
    registry.set_tags(
        model,
        version,
        {
            "decision": intent["action"],
            "decision_reasons": " | ".join(intent["reasons"]),
            "promoted_at": now,
            "promoted_by": intent["actor"],
            "promoted_in_run": f"{intent['dag_id']}/{intent['run_id']}",
        },
        settings,
    )
    if frm is not None:
        tags = {"superseded_by": version, "superseded_at": now}
        if intent["action"] == "rollback":
            tags.update(rolled_back_at=now, rolled_back_by=intent["actor"])
        registry.set_tags(model, frm, tags, settings)


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
        monitoring.append_audit(
            model=model,
            action=action,
            actor=context.triggered_by,
            challenger_version=version,
            champion_before=champion,
            champion_after=champion,
            reasons=reasons,
            metrics=metrics,
            reason=context.reason,
            dag_id=context.dag_id,
            run_id=context.run_id,
            url=settings.monitoring_db_url,
        )
    message = f"{model} version {version} {action.replace('_', ' ')}: " + "; ".join(reasons)
    log.info(message)
    return PromotionResult(model, action, version, champion, champion, message)


def manual_promote(
    model: str, version: str, *, reason: str, actor: str, settings: Settings | None = None
) -> PromotionResult:
    """A human override: make ``version`` champion, through the same compare-and-set and audit.

    Refused, with the reason and nothing changed, for an unknown version, a version without
    a passed validation on record, or the current champion.
    """
    settings = settings or get_settings()
    if not reason.strip():
        raise InvalidInput("a manual promotion needs --reason: it goes into the audit log")
    info = registry.version_info(model, version, settings)
    if info.tags.get("validation") != "passed":
        raise InvalidInput(
            f"refusing to promote {model} version {version}: it has no passed data validation "
            f"on record (tag validation={info.tags.get('validation', 'missing')!r})"
        )
    current = registry.alias_version(model, registry.CHAMPION, settings)
    if current == version:
        raise InvalidInput(f"{model} version {version} is already the champion")
    context = RunContext(
        dag_id="cli",
        run_id=f"manual-promote-{_now():%Y%m%dT%H%M%S%f}",
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


# --- rollback: the champion history, walked backwards ---------------------------------------


@dataclass(frozen=True)
class RollbackPlan:
    target: str | None  # the version a rollback serves, None when refused
    after: str | None  # where the rollback after that would go (previous_champion)
    refusal: str


def rollback_plan(
    current: str | None, history: list[dict[str, Any]], seed: list[str]
) -> RollbackPlan:
    """Where a rollback from ``current`` goes, by the done champion changes (oldest first).

    The champions form a stack: a promotion pushes, a rollback pops back to its target and
    marks the version it left as rolled back. ``seed`` starts the stack when the history is
    empty (a store from before intents: MLflow's previous_champion and champion).
    """
    stack = [] if history else [v for v in seed if v is not None]
    rolled_back: set[str] = set()
    for change in history:
        frm, to = change["from_version"], change["to_version"]
        if change["action"] == "rollback":
            while stack and stack[-1] != to:
                stack.pop()
            if frm is not None:
                rolled_back.add(frm)
            if not stack and to is not None:
                stack.append(to)
        elif change["action"] in MOVES_CHAMPION:
            if frm is not None and (not stack or stack[-1] != frm):
                stack.append(frm)
            if to is not None and (not stack or stack[-1] != to):
                stack.append(to)
            rolled_back.discard(to)
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)
    earlier = [v for v in reversed(stack[:-1]) if v != current]
    allowed = [v for v in earlier if v not in rolled_back]
    allowed = [v for i, v in enumerate(allowed) if v not in allowed[:i]]
    if not allowed:
        if earlier:
            skipped = ", ".join(_v(v) for v in dict.fromkeys(earlier))
            refusal = (
                f"the earlier champions ({skipped}) were themselves rolled back and a rollback "
                f"never re-serves them; promote a version by hand with `driftline promote`"
            )
        else:
            refusal = (
                f"{_v(current)} is the first champion on record; there is no earlier champion "
                "to roll back to"
            )
        return RollbackPlan(None, None, refusal)
    return RollbackPlan(allowed[0], allowed[1] if len(allowed) > 1 else None, "")


def rollback(
    model: str, *, reason: str, actor: str, settings: Settings | None = None
) -> PromotionResult:
    """Serve the champion before the current one again (compare-and-set, audited).

    The version rolled back from is never served by a later rollback; a second rollback
    goes one further back, or is refused with the reason.
    """
    settings = settings or get_settings()
    if not reason.strip():
        raise InvalidInput("a rollback needs --reason: it goes into the audit log")
    _in_flight(settle(model, actor=actor, settings=settings))
    current = registry.alias_version(model, registry.CHAMPION, settings)
    if current is None:
        raise InvalidInput(f"{model} has no champion; there is nothing to roll back")
    seed = [registry.alias_version(model, registry.PREVIOUS_CHAMPION, settings), current]
    plan = rollback_plan(
        current, monitoring.champion_history(model, url=settings.monitoring_db_url), seed
    )
    if plan.target is None:
        raise InvalidInput(f"refusing to roll back {model}: {plan.refusal}")
    context = RunContext(
        dag_id="cli",
        run_id=f"rollback-{_now():%Y%m%dT%H%M%S%f}",
        run_type="manual",
        triggered_by=actor,
        reason=reason,
    )
    return promote(
        model,
        plan.target,
        expected_champion=current,
        context=context,
        reasons=[f"rollback by {actor} from v{current} to v{plan.target}: {reason}"],
        actor=actor,
        action="rollback",
        previous_after=plan.after,
        settings=settings,
    )
