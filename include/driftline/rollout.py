"""Canary rollout: a challenger that passed the offline policy earns its traffic step by step.

With ``rollout.mode: canary`` in the spec, a challenger the policy would promote becomes the
``candidate`` (MLflow alias) and serves ``steps[0]`` of the traffic (the version tag
``rollout_share``; the scoring service routes a card to the candidate when
:func:`stable_fraction` of the model and its first entity key is below the share). The
``<model>_rollout`` DAG judges each step on the prediction log: the candidate's live traffic
against the champion's over the SAME period — the step's period, from the moment its share
took effect to the judging time. It ramps to the next step, holds, or aborts; the last step
(1.0) is the promotion, through :func:`driftline.promotion.promote`'s compare-and-set.

Invariants:

* At most one open rollout per model (``monitoring.rollouts``, a partial unique index). A
  challenger that passes while one is open is held back (decision ``held``, with the
  reason): its evaluation was made against a champion the open rollout may replace. The
  champion is never touched by a start, a step, a pause or an abort.
* Periods tile: a step's period starts where the judged period of the step before ended,
  and only rows of that period, of the rollout's two versions, on their own arms, count.
* Every change that spans the monitoring store and MLflow is an intent, as in
  ``promotion``: (1) the claim and the change in flight (``pending_action``) in one
  transaction; (2) MLflow (the ``candidate`` alias, the ``rollout_share`` tag, or the
  champion through promotion's own intent); (3) the new state and its audit row in one
  transaction. Whoever comes next (the next check, the same run's retry at once, anyone
  after the lease ``DRIFTLINE_PROMOTION_LEASE_SECONDS``, ``driftline rollout`` commands)
  settles it by reading MLflow: a step MLflow shows is finished, one it does not is undone
  (the step stays and is judged again); an abort is always finished (its decision stands);
  a completion is finished when MLflow's champion is the candidate, undone when it is still
  the old champion.
* Every ``rollout_*`` audit row's ``metrics`` carries ``share`` (the candidate's share after
  the action, 0 after an abort) and ``step`` (index into the steps, -1 after an abort).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftline import monitoring, predlog, registry
from driftline.clock import utc
from driftline.errors import Conflict, InvalidInput
from driftline.lineage import RunContext
from driftline.serving.routing import ROLLOUT_SHARE_TAG as SHARE_TAG
from driftline.settings import Settings, get_settings
from driftline.specs import ModelSpec, RolloutGuards, load_spec

log = logging.getLogger(__name__)

RAMP, WAIT, ABORT, COMPLETE = "ramp", "wait", "abort", "complete"
# the PSI of two score samples, on quantile bins of the champion's scores
PSI_BINS = 10
_PSI_FLOOR = 1e-4
# the PR-AUC guard's bootstrap: resamples and seed (the same rows give the same verdict)
PR_AUC_RESAMPLES = 400
PR_AUC_SEED = 20261126


def _v(version: str | None) -> str:
    return "none" if version is None else f"v{version}"


def _now() -> datetime:
    return datetime.now(UTC)


# --- live performance per version -----------------------------------------------------------


@dataclass(frozen=True)
class ArmStats:
    """One arm's live traffic over a period: what the guards compare."""

    arm: str
    version: str | None
    requests: int = 0
    errors: int = 0
    p99_latency_ms: float | None = None
    mean_score: float | None = None
    labeled: int = 0
    positives: int = 0
    pr_auc: float | None = None
    scores: tuple[float, ...] = field(default=(), repr=False)
    # the labeled rows behind pr_auc: their labels and scores, for the guard's interval
    labels: tuple[int, ...] = field(default=(), repr=False)
    labeled_scores: tuple[float, ...] = field(default=(), repr=False)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        hidden = {"scores", "labels", "labeled_scores"}
        summary = {k: v for k, v in asdict(self).items() if k not in hidden}
        summary["error_rate"] = self.error_rate
        return summary


def arm_stats(
    rows: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    arm: str,
    version: str | None,
    start: datetime,
    end: datetime,
) -> ArmStats:
    """The rows of one arm and version scored in ``[start, end)``, with matured labels.

    ``labels`` has ``transaction_id`` and ``label`` of the transactions whose labels have
    matured; rows without one count for everything but PR-AUC.
    """
    if rows.empty:
        return ArmStats(arm, version)
    scored = pd.to_datetime(rows["scored_at"], utc=True)
    mine = rows[
        (rows["arm"] == arm)
        & (rows["version"].astype(str) == str(version))
        & (scored >= pd.Timestamp(utc(start)))
        & (scored < pd.Timestamp(utc(end)))
    ]
    if mine.empty:
        return ArmStats(arm, version)
    ok = mine[mine["status"] == "ok"]
    scores = ok["score"].astype(float).to_numpy()
    latency = mine["latency_ms"].astype(float).dropna().to_numpy()
    # a transaction scored more than once (a client's retry) counts once, with its last score
    once = ok.drop_duplicates("transaction_id", keep="last")
    joined = once.merge(labels, on="transaction_id", how="inner") if len(labels) else ok.iloc[:0]
    positives = int(joined["label"].sum()) if len(joined) else 0
    pr_auc = None
    if 0 < positives < len(joined):
        from sklearn.metrics import average_precision_score

        pr_auc = float(average_precision_score(joined["label"].astype(int), joined["score"]))
    return ArmStats(
        arm=arm,
        version=version,
        requests=len(mine),
        errors=int((mine["status"] != "ok").sum()),
        p99_latency_ms=float(np.percentile(latency, 99)) if len(latency) else None,
        mean_score=float(scores.mean()) if len(scores) else None,
        labeled=len(joined),
        positives=positives,
        pr_auc=pr_auc,
        scores=tuple(scores.tolist()),
        labels=tuple(joined["label"].astype(int).tolist()) if len(joined) else (),
        labeled_scores=tuple(joined["score"].astype(float).tolist()) if len(joined) else (),
    )


def pr_auc_drop_interval(
    champion: ArmStats, candidate: ArmStats, *, level: float
) -> tuple[float, float]:
    """Bootstrap interval of champion PR-AUC minus candidate PR-AUC at ``level`` (two-sided):
    each arm's labeled rows resampled with replacement, independently (the arms are
    different cards, so nothing pairs them). A resample with a single class is drawn
    again."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(PR_AUC_SEED)

    def resampled(arm: ArmStats) -> np.ndarray:
        labels, scores = np.asarray(arm.labels), np.asarray(arm.labeled_scores)
        values = []
        while len(values) < PR_AUC_RESAMPLES:
            pick = rng.integers(0, len(labels), len(labels))
            if 0 < labels[pick].sum() < len(pick):
                values.append(average_precision_score(labels[pick], scores[pick]))
        return np.asarray(values)

    drops = resampled(champion) - resampled(candidate)
    tail = (1 - level) / 2
    low, high = np.quantile(drops, [tail, 1 - tail])
    return float(low), float(high)


def psi(expected: np.ndarray | tuple[float, ...], actual: np.ndarray | tuple[float, ...]) -> float:
    """Population stability index of ``actual`` against ``expected`` (quantile bins of
    ``expected``; empty bins floored at 1e-4). 0 for the same distribution; 0.2 is the
    usual "shifted"."""
    expected, actual = np.asarray(expected, float), np.asarray(actual, float)
    if not len(expected) or not len(actual):
        return 0.0
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, PSI_BINS + 1)))
    edges = np.concatenate(([-np.inf], edges[1:-1], [np.inf]))
    want = np.histogram(expected, edges)[0] / len(expected)
    got = np.histogram(actual, edges)[0] / len(actual)
    want, got = np.clip(want, _PSI_FLOOR, None), np.clip(got, _PSI_FLOOR, None)
    return float(np.sum((got - want) * np.log(got / want)))


def matured_labels(
    spec: ModelSpec, rows: pd.DataFrame, *, at: datetime, offline_dir: Path
) -> pd.DataFrame:
    """``transaction_id`` and ``label`` of the logged transactions whose label was available
    at ``at`` (the offline entity table's ``label_available_at``)."""
    from driftline import offline

    empty = pd.DataFrame({"transaction_id": pd.Series(dtype=str), "label": pd.Series(dtype=int)})
    known = rows.dropna(subset=["transaction_id"]) if "transaction_id" in rows else rows.iloc[:0]
    if known.empty:
        return empty
    wanted = set(pd.to_datetime(known["event_timestamp"], utc=True).dt.date)
    days = [d for d in offline.list_days(offline_dir, spec.entity_table) if d in wanted]
    table = offline.read_table(offline_dir, spec.entity_table, days).to_pandas()
    matured = table[
        (table["label_available_at"] <= pd.Timestamp(utc(at)))
        & table["transaction_id"].isin(set(known["transaction_id"]))
    ]
    return pd.DataFrame(
        {"transaction_id": matured["transaction_id"], "label": matured[spec.label].astype(int)}
    ).drop_duplicates("transaction_id")


def live_performance(
    spec: ModelSpec,
    *,
    start: datetime,
    end: datetime,
    at: datetime | None = None,
    settings: Settings | None = None,
) -> list[dict[str, Any]]:
    """Live quality per (version, arm) from the prediction log in ``[start, end)``: requests,
    error rate, p99 latency, mean score, and PR-AUC on the rows whose labels matured by
    ``at`` (default ``end``)."""
    settings = settings or get_settings()
    rows = predlog.read(settings.offline_dir, spec.name, start=start, end=end)
    if rows.empty:
        return []
    labels = matured_labels(spec, rows, at=at or end, offline_dir=settings.offline_dir)
    pairs = rows[["version", "arm"]].astype(str).drop_duplicates().itertuples(index=False)
    return [
        arm_stats(rows, labels, arm=arm, version=version, start=start, end=end).as_dict()
        for version, arm in sorted(pairs)
    ]


# --- the guards: a pure function ------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    outcome: str  # ramp | wait | abort
    reasons: list[str]
    checks: list[dict[str, Any]]
    period: tuple[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "period": list(self.period)}


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} ms"


def judge(
    guards: RolloutGuards,
    *,
    step_minutes: float,
    start: datetime,
    end: datetime,
    candidate: ArmStats,
    champion: ArmStats,
) -> Verdict:
    """The verdict on one step's period ``[start, end)``, both arms measured over it.

    * either arm below ``min_requests`` -> ``wait`` (nothing is judged on a handful);
    * a broken guard -> ``abort``, at any time in the step: error rate or p99 latency of the
      candidate above its ceiling AND above the champion's; score PSI above
      ``max_score_psi``; champion PR-AUC minus candidate PR-AUC above ``max_pr_auc_drop``
      with the lower bound of its bootstrap interval (judged only when both arms have
      ``min_labeled_positives`` matured positives);
    * both arms above a ceiling (the service, not the model) -> ``wait``;
    * everything holds but the step has lasted less than ``step_minutes`` -> ``wait``;
    * otherwise -> ``ramp``.
    """
    period = f"[{utc(start):%Y-%m-%d %H:%M:%S}, {utc(end):%Y-%m-%d %H:%M:%S}) UTC"
    bounds = (utc(start).isoformat(), utc(end).isoformat())
    checks: list[dict[str, Any]] = []

    def check(guard: str, state: str, cand: Any, champ: Any, threshold: Any, why: str) -> None:
        checks.append(
            {
                "guard": guard,
                "state": state,  # held | broken | shared | not_judged
                "candidate": cand,
                "champion": champ,
                "threshold": threshold,
                "message": f"{guard}: {why} over {period}",
            }
        )

    short = [
        f"{arm.arm} v{arm.version} {arm.requests} of {guards.min_requests}"
        for arm in (candidate, champion)
        if arm.requests < guards.min_requests
    ]
    if short:
        check(
            "min_requests",
            "not_judged",
            candidate.requests,
            champion.requests,
            guards.min_requests,
            "too few requests to judge: " + ", ".join(short),
        )
        return Verdict(WAIT, [checks[-1]["message"]], checks, bounds)

    for guard, cand, champ, ceiling, show in (
        (
            "max_error_rate",
            candidate.error_rate,
            champion.error_rate,
            guards.max_error_rate,
            lambda x: f"{x:.2%}",
        ),
        (
            "max_p99_latency_ms",
            candidate.p99_latency_ms,
            champion.p99_latency_ms,
            guards.max_p99_latency_ms,
            _ms,
        ),
    ):
        cand_v, champ_v = cand or 0.0, champ or 0.0
        said = f"candidate {show(cand)}, champion {show(champ)}, ceiling {show(ceiling)}"
        if cand_v > ceiling and cand_v > champ_v:
            state, why = "broken", f"{said} — the candidate is over it and worse"
        elif cand_v > ceiling:
            state, why = "shared", f"{said} — both arms over it: the service, not the model"
        else:
            state, why = "held", said
        check(guard, state, cand, champ, ceiling, why)

    shift = psi(champion.scores, candidate.scores)
    check(
        "max_score_psi",
        "broken" if shift > guards.max_score_psi else "held",
        shift,
        None,
        guards.max_score_psi,
        f"PSI of the candidate's {len(candidate.scores)} scores against the champion's "
        f"{len(champion.scores)}: {shift:.4f} (limit {guards.max_score_psi})",
    )

    need = guards.min_labeled_positives
    if (
        candidate.pr_auc is not None
        and champion.pr_auc is not None
        and min(candidate.positives, champion.positives) >= need
    ):
        drop = champion.pr_auc - candidate.pr_auc
        low, high = pr_auc_drop_interval(champion, candidate, level=guards.pr_auc_confidence)
        check(
            "max_pr_auc_drop",
            "broken" if low > guards.max_pr_auc_drop else "held",
            candidate.pr_auc,
            champion.pr_auc,
            guards.max_pr_auc_drop,
            f"PR-AUC candidate {candidate.pr_auc:.4f} on {candidate.labeled} matured labels, "
            f"champion {champion.pr_auc:.4f} on {champion.labeled}: drop {drop:+.4f}, "
            f"{guards.pr_auc_confidence:.0%} interval [{low:+.4f}, {high:+.4f}]; broken when "
            f"its lower bound is above {guards.max_pr_auc_drop}",
        )
    else:
        check(
            "max_pr_auc_drop",
            "not_judged",
            candidate.pr_auc,
            champion.pr_auc,
            guards.max_pr_auc_drop,
            f"not judged: matured positives candidate {candidate.positives}, champion "
            f"{champion.positives} (needs {need} each)",
        )

    broken = [c["message"] for c in checks if c["state"] == "broken"]
    if broken:
        return Verdict(ABORT, broken, checks, bounds)
    shared = [c["message"] for c in checks if c["state"] == "shared"]
    if shared:
        return Verdict(WAIT, shared, checks, bounds)
    lasted = (utc(end) - utc(start)).total_seconds() / 60
    if lasted < step_minutes:
        return Verdict(
            WAIT,
            [f"guards hold; the step has lasted {lasted:.2f} of {step_minutes} minutes"],
            checks,
            bounds,
        )
    return Verdict(
        RAMP,
        [f"every guard held over {period} ({lasted:.2f} minutes)"],
        checks,
        bounds,
    )


def judge_rows(
    guards: RolloutGuards,
    rows: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    candidate_version: str,
    champion_version: str | None,
    step_minutes: float,
    start: datetime,
    end: datetime,
) -> Verdict:
    """:func:`judge` on prediction-log rows: each arm is its own version's rows on its own
    arm, scored inside the one period ``[start, end)`` — rows outside it, of other versions
    (an earlier candidate) or on the other arm do not count."""
    candidate = arm_stats(
        rows, labels, arm="candidate", version=candidate_version, start=start, end=end
    )
    champion = arm_stats(
        rows, labels, arm="champion", version=champion_version, start=start, end=end
    )
    return judge(
        guards,
        step_minutes=step_minutes,
        start=start,
        end=end,
        candidate=candidate,
        champion=champion,
    )


# --- the rollout's state: start, settle, check, ramp, complete, abort, pause, resume -------


class RolloutInFlight(Conflict):
    """A change of this model's rollout is in flight and its lease has not expired."""

    retryable = True


@dataclass(frozen=True)
class RolloutResult:
    model: str
    action: str  # rollout_* | held | noop | undone
    version: str | None
    share: float
    step: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pending(context: RunContext, actor: str, **details: Any) -> dict[str, Any]:
    return {
        "run_key": context.key,
        "dag_id": context.dag_id,
        "run_id": context.run_id,
        "actor": actor,
        "reason": context.reason,
        **details,
    }


def _audit(
    rollout: dict[str, Any],
    action: str,
    *,
    share: float,
    step: int,
    reasons: list[str],
    by: str,
    champion_after: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A promotion_audit row of a rollout change: ``share`` and ``step`` always in metrics."""
    pending = rollout.get("pending") or {}
    return {
        "model": rollout["model"],
        "action": action,
        "actor": pending.get("actor") or by,
        "challenger_version": rollout["candidate_version"],
        "champion_before": rollout["champion_version"],
        "champion_after": champion_after or rollout["champion_version"],
        "reasons": reasons,
        "metrics": {
            "share": float(share),
            "step": int(step),
            "steps": list(rollout["steps"]),
            "rollout_id": rollout["id"],
            **(extra or {}),
        },
        "reason": pending.get("reason") or "",
        "dag_id": pending.get("dag_id") or rollout["dag_id"],
        "run_id": pending.get("run_id") or rollout["run_id"],
    }


_DONE = {"pending_action": None, "pending": None, "lease_until": None}


def _reload(rollout_id: int, model: str, url: str) -> dict[str, Any]:
    current = monitoring.open_rollout(model, url=url)
    if current is None or current["id"] != rollout_id:
        raise Conflict(f"{model}: rollout {rollout_id} ended while it was being changed")
    return current


def _lease() -> datetime:
    from driftline.promotion import lease_seconds

    return _now() + timedelta(seconds=lease_seconds())


def _step_name(step: int, steps: list[float]) -> str:
    return f"step {step + 1} of {len(steps)}"


def start(
    model: str,
    version: str,
    *,
    champion: str | None,
    context: RunContext,
    reasons: list[str],
    metrics: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> RolloutResult:
    """Make ``version`` the candidate at the first share, instead of promoting it.

    Held back (decision ``held``, audited) when another rollout of the model is open;
    ``ChampionMoved`` when the champion is no longer the one it was evaluated against.
    The champion is never touched.
    """
    from driftline.promotion import ChampionMoved, _audit_aborted, fault_pause, lease_seconds

    settings = settings or get_settings()
    url = settings.monitoring_db_url
    spec = load_spec(model, settings.models_dir)
    actor = context.triggered_by
    _in_flight(settle(model, actor=actor, run_key=context.key, settings=settings))
    current = monitoring.open_rollout(model, url=url)
    if current is not None:
        return _hold(model, version, current, context, reasons, metrics, settings)
    served = registry.alias_version(model, registry.CHAMPION, settings)
    if served != champion:
        message = (
            f"rollout of {model} v{version} not started: the champion moved from "
            f"{_v(champion)} to {_v(served)} since evaluation (compare-and-set refused); "
            "re-run the evaluation against the new champion"
        )
        # the same record as a promotion refused by the compare-and-set
        _audit_aborted(
            model, version, champion, served, context, actor, message, reasons, metrics, settings
        )
        raise ChampionMoved(message)
    steps = list(spec.rollout.steps)
    rollout_id = monitoring.begin_rollout(
        model=model,
        candidate=version,
        champion=champion,
        steps=steps,
        step_minutes=spec.rollout.step_minutes,
        pending=_pending(context, actor, reasons=reasons, evidence=metrics or {}),
        lease_seconds=lease_seconds(),
        actor=actor,
        dag_id=context.dag_id,
        run_id=context.run_id,
        url=url,
    )
    if rollout_id is None:  # another start won the race
        current = monitoring.open_rollout(model, url=url)
        if current is not None:
            return _hold(model, version, current, context, reasons, metrics, settings)
        raise Conflict(f"{model}: could not open a rollout of v{version}; try again")
    fault_pause()
    # the tag first: the service routes only once the alias exists too
    registry.set_tags(model, version, {SHARE_TAG: steps[0]}, settings)
    registry.set_alias(model, registry.CANDIDATE, version, settings)
    return _finish_start(_reload(rollout_id, model, url), by=actor, settings=settings)


def _finish_start(rollout: dict[str, Any], *, by: str, settings: Settings) -> RolloutResult:
    model, version, steps = rollout["model"], rollout["candidate_version"], rollout["steps"]
    pending = rollout["pending"] or {}
    message = (
        f"{model}: canary rollout of v{version} against champion "
        f"{_v(rollout['champion_version'])} started at {steps[0]:.0%} of the traffic "
        f"({_step_name(0, steps)}; each step at least {rollout['step_minutes']} minutes)"
    )
    if not monitoring.change_rollout(
        rollout["id"],
        pending="rollout_started",
        values={**_DONE, "step_started_at": _now()},
        audit=_audit(
            rollout,
            "rollout_started",
            share=steps[0],
            step=0,
            reasons=[message, *pending.get("reasons", [])],
            by=by,
            extra={"evidence": pending.get("evidence", {})},
        ),
        url=settings.monitoring_db_url,
    ):
        raise Conflict(f"{model}: the start of rollout {rollout['id']} was settled by another")
    registry.set_tags(
        model,
        version,
        {"decision": "rollout_started", "decision_reasons": " | ".join([message])},
        settings,
    )
    log.info(message)
    return RolloutResult(model, "rollout_started", version, steps[0], 0, message)


def _hold(
    model: str,
    version: str,
    current: dict[str, Any],
    context: RunContext,
    reasons: list[str],
    metrics: dict[str, Any] | None,
    settings: Settings,
) -> RolloutResult:
    """A challenger that passed while a rollout is open waits for the next retrain."""
    if current["candidate_version"] == version:
        message = f"{model} v{version} is already the candidate ({current['share']:.0%})"
        return RolloutResult(model, "noop", version, current["share"], current["step"], message)
    message = (
        f"{model} v{version} passed the policy but is held back: the canary rollout of "
        f"v{current['candidate_version']} is in progress ({_step_name(current['step'], current['steps'])}, "
        f"{current['share']:.0%}, {current['status']}). v{version} was evaluated against "
        f"{_v(current['champion_version'])}, which that rollout may replace; the next retrain "
        "after it ends evaluates again (`driftline rollout abort` ends it early)"
    )
    registry.set_tags(
        model,
        version,
        {"decision": "held", "decision_reasons": " | ".join([message, *reasons])},
        settings,
    )
    url = settings.monitoring_db_url
    already = any(
        row["action"] == "held" and row["run_id"] == context.run_id
        for row in monitoring.audit_log(model, limit=50, url=url)
    )
    if not already:
        monitoring.append_audit(
            model=model,
            action="held",
            actor=context.triggered_by,
            challenger_version=version,
            champion_before=current["champion_version"],
            champion_after=current["champion_version"],
            reasons=[message, *reasons],
            metrics={**(metrics or {}), "rollout_id": current["id"]},
            reason=context.reason,
            dag_id=context.dag_id,
            run_id=context.run_id,
            url=url,
        )
    log.info(message)
    return RolloutResult(model, "held", version, current["share"], current["step"], message)


def settle(
    model: str,
    *,
    actor: str,
    run_key: str | None = None,
    stale_after: float | None = None,
    settings: Settings | None = None,
) -> list[Any]:
    """Finish or undo the rollout change a dead process left in flight, by what MLflow shows.

    A change is stale when its lease has expired (or, with ``stale_after``, it is older than
    that); the same run's retry (``run_key``) resolves its own at once. A change still
    within its lease is reported ``in_flight`` and left alone.
    """
    from driftline.promotion import Settled

    settings = settings or get_settings()
    rollout = monitoring.open_rollout(model, url=settings.monitoring_db_url)
    if rollout is None or rollout["pending_action"] is None:
        return []
    pending = rollout["pending"] or {}
    own = run_key is not None and pending.get("run_key") == run_key
    expires = (
        rollout["updated_at"] + timedelta(seconds=stale_after)
        if stale_after is not None
        else rollout["lease_until"]
    )
    if not own and expires is not None and expires > _now():
        return [
            Settled(
                model,
                "in_flight",
                rollout["candidate_version"],
                f"{model}: {rollout['pending_action']} of v{rollout['candidate_version']} by "
                f"{pending.get('actor', '?')} is in flight; its lease ends "
                f"{expires:%H:%M:%S} UTC",
            )
        ]
    return [_resolve(rollout, by=actor, settings=settings)]


def _in_flight(results: list[Any]) -> None:
    busy = [r.message for r in results if r.outcome == "in_flight"]
    if busy:
        raise RolloutInFlight(
            "; ".join(busy) + " — retry after the lease, or `driftline rollout status` to see it"
        )


def _resolve(rollout: dict[str, Any], *, by: str, settings: Settings) -> Any:
    from driftline import promotion
    from driftline.promotion import Settled

    model, version = rollout["model"], rollout["candidate_version"]
    action, pending = rollout["pending_action"], rollout["pending"] or {}
    url = settings.monitoring_db_url
    if action == "rollout_aborted":
        result = _finish_abort(
            rollout,
            by=by,
            reason=pending.get("abort_reason", "aborted"),
            checks=pending.get("checks"),
            expected="rollout_aborted",
            settings=settings,
        )
        return Settled(model, "finished", version, f"{result.message} (finished by {by})")
    if action == "rollout_started":
        if registry.alias_version(model, registry.CANDIDATE, settings) == version:
            registry.set_tags(model, version, {SHARE_TAG: rollout["steps"][0]}, settings)
            result = _finish_start(rollout, by=by, settings=settings)
            return Settled(model, "finished", version, f"{result.message} (finished by {by})")
        registry.delete_tag(model, version, SHARE_TAG, settings)
        message = (
            f"{model}: the start of the rollout of v{version} was interrupted before MLflow "
            f"named it candidate; undone by {by} (the champion never moved)"
        )
        monitoring.change_rollout(
            rollout["id"],
            pending="rollout_started",
            values={**_DONE, "status": "undone", "share": 0.0, "ended_at": _now()}
            | {"end_reason": message},
            audit=_audit(rollout, "undone", share=0.0, step=-1, reasons=[message], by=by),
            url=url,
        )
        return Settled(model, "undone", version, message)
    if action == "rollout_step":
        tag = registry.version_info(model, version, settings).tags.get(SHARE_TAG)
        if tag is not None and float(tag) == float(pending["share"]):
            result = _finish_step(rollout, by=by, settings=settings)
            return Settled(model, "finished", version, f"{result.message} (finished by {by})")
        message = (
            f"{model}: the ramp of v{version} to {pending['share']:.0%} was interrupted before "
            f"MLflow's rollout_share moved; undone by {by}: it stays at {rollout['share']:.0%} "
            "and the step is judged again"
        )
        return _undo(rollout, message, by=by, settings=settings)
    # rollout_completed: the promotion has its own intent; settle it, then read the champion
    busy = [
        r
        for r in promotion.settle(
            model, actor=by, run_key=pending.get("run_key"), settings=settings
        )
        if r.outcome == "in_flight"
    ]
    if busy:
        return Settled(model, "in_flight", version, busy[0].message)
    served = registry.alias_version(model, registry.CHAMPION, settings)
    if served == version:
        result = _finish_complete(rollout, by=by, settings=settings)
        return Settled(model, "finished", version, f"{result.message} (finished by {by})")
    if served == rollout["champion_version"]:
        message = (
            f"{model}: the promotion ending the rollout of v{version} never reached MLflow; "
            f"undone by {by}: v{version} stays candidate at {rollout['share']:.0%} and the "
            "step is judged again"
        )
        return _undo(rollout, message, by=by, settings=settings)
    result = _finish_abort(
        rollout,
        by=by,
        reason=(
            f"the champion moved from {_v(rollout['champion_version'])} to {_v(served)} "
            "outside the rollout"
        ),
        checks=None,
        expected="rollout_completed",
        settings=settings,
    )
    return Settled(model, "finished", version, result.message)


def _undo(rollout: dict[str, Any], message: str, *, by: str, settings: Settings) -> Any:
    """The change in flight never reached MLflow: drop it; the step stays as it was."""
    from driftline.promotion import Settled

    monitoring.change_rollout(
        rollout["id"],
        pending=rollout["pending_action"],
        values=_DONE,
        audit=_audit(
            rollout,
            "undone",
            share=rollout["share"],
            step=rollout["step"],
            reasons=[message],
            by=by,
        ),
        url=settings.monitoring_db_url,
    )
    return Settled(rollout["model"], "undone", rollout["candidate_version"], message)


def judge_step(
    spec: ModelSpec, rollout: dict[str, Any], *, at: datetime, settings: Settings
) -> Verdict:
    """The guards on the rollout's current step, from when it began to ``at``, read from the
    prediction log with the labels matured by ``at``."""
    began = rollout["step_started_at"]
    rows = predlog.read(settings.offline_dir, spec.name, start=began, end=at)
    labels = matured_labels(spec, rows, at=at, offline_dir=settings.offline_dir)
    return judge_rows(
        spec.rollout.guards,
        rows,
        labels,
        candidate_version=rollout["candidate_version"],
        champion_version=rollout["champion_version"],
        step_minutes=rollout["step_minutes"],
        start=began,
        end=at,
    )


def check(
    model: str, *, at: datetime, context: RunContext, settings: Settings | None = None
) -> dict[str, Any]:
    """Judge the open rollout's current step at ``at`` (never later than now).

    Returns what to do — ``action``: ``none`` (no rollout), ``wait``, ``ramp``, ``complete``
    (the next step is 1.0: promote) or ``abort`` — with the reasons, the verdict's checks
    and the rollout's id and step (what :func:`advance` and :func:`abort` guard on).
    """
    settings = settings or get_settings()
    spec = load_spec(model, settings.models_dir)
    at = min(utc(at), _now())
    results = settle(model, actor=f"rollout {context.key}", run_key=context.key, settings=settings)
    busy = [r.message for r in results if r.outcome == "in_flight"]
    rollout = monitoring.open_rollout(model, url=settings.monitoring_db_url)
    if rollout is None:
        return {"action": "none", "model": model, "reasons": ["no rollout in progress"]}
    base = {
        "model": model,
        "rollout_id": rollout["id"],
        "candidate": rollout["candidate_version"],
        "champion": rollout["champion_version"],
        "status": rollout["status"],
        "step": rollout["step"],
        "share": rollout["share"],
        "steps": rollout["steps"],
        "settled": [r.message for r in results],
    }
    if busy:
        return {**base, "action": WAIT, "reasons": busy}
    served = registry.alias_version(model, registry.CHAMPION, settings)
    named = registry.alias_version(model, registry.CANDIDATE, settings)
    if served != rollout["champion_version"]:
        reason = (
            f"the champion moved from {_v(rollout['champion_version'])} to {_v(served)} "
            f"outside the rollout; v{rollout['candidate_version']} was judged against "
            f"{_v(rollout['champion_version'])}"
        )
        return {**base, "action": ABORT, "reasons": [reason]}
    if named != rollout["candidate_version"]:
        reason = (
            f"MLflow's candidate alias names {_v(named)}, not v{rollout['candidate_version']}: "
            "moved outside the rollout"
        )
        return {**base, "action": ABORT, "reasons": [reason]}
    began = rollout["step_started_at"]
    if began is None or at <= began:
        return {**base, "action": WAIT, "reasons": [f"the step began at {began}; nothing to judge"]}
    verdict = judge_step(spec, rollout, at=at, settings=settings)
    action, reasons = verdict.outcome, list(verdict.reasons)
    if action == RAMP and rollout["status"] == "paused":
        action = WAIT
        reasons.append(f"paused: ramping stopped at {rollout['share']:.0%}")
    elif action == RAMP and rollout["step"] + 1 == len(rollout["steps"]) - 1:
        action = COMPLETE
    log.info("%s: %s — %s", model, action, "; ".join(reasons))
    return {**base, "action": action, "reasons": reasons, "verdict": verdict.as_dict()}


def advance(
    model: str, judged: dict[str, Any], *, context: RunContext, settings: Settings | None = None
) -> RolloutResult:
    """Act on a ``ramp`` or ``complete`` verdict of :func:`check`: the next share, or the
    promotion. Does nothing (``noop``) when the rollout moved or was paused since."""
    from driftline.promotion import fault_pause

    settings = settings or get_settings()
    url = settings.monitoring_db_url
    actor = context.triggered_by
    # this run's retry after its own attempt died mid-change: settle that first (undone, the
    # step is taken again below; finished, the rollout moved and nothing is left to do); a
    # change of another run within its lease stays, and the claim below then fails
    settle(model, actor=actor, run_key=context.key, settings=settings)
    rollout = monitoring.open_rollout(model, url=url)
    if (
        rollout is None
        or rollout["id"] != judged["rollout_id"]
        or rollout["step"] != judged["step"]
        or rollout["status"] != "active"
    ):
        message = f"{model}: the rollout moved since it was judged ({judged}); nothing done"
        return RolloutResult(model, "noop", judged.get("candidate"), 0.0, -1, message)
    steps = rollout["steps"]
    nxt = rollout["step"] + 1
    details = {
        "step": nxt,
        "share": steps[nxt],
        "period_end": judged["verdict"]["period"][1],
        "checks": judged["verdict"]["checks"],
        "judged": judged["reasons"],
    }
    action = "rollout_completed" if judged["action"] == COMPLETE else "rollout_step"
    if not monitoring.change_rollout(
        rollout["id"],
        statuses=("active",),
        pending=None,
        step=rollout["step"],
        values={
            "pending_action": action,
            "pending": _pending(context, actor, **details),
            "lease_until": _lease(),
        },
        url=url,
    ):
        message = f"{model}: the rollout changed while being ramped; nothing done"
        return RolloutResult(model, "noop", rollout["candidate_version"], 0.0, -1, message)
    fault_pause()
    rollout = _reload(rollout["id"], model, url)
    if action == "rollout_step":
        registry.set_tags(model, rollout["candidate_version"], {SHARE_TAG: steps[nxt]}, settings)
        return _finish_step(rollout, by=actor, settings=settings)
    return _complete(rollout, context=context, settings=settings)


def _finish_step(rollout: dict[str, Any], *, by: str, settings: Settings) -> RolloutResult:
    model, version, steps = rollout["model"], rollout["candidate_version"], rollout["steps"]
    pending = rollout["pending"]
    nxt, share = int(pending["step"]), float(pending["share"])
    message = (
        f"{model}: v{version} ramped from {rollout['share']:.0%} to {share:.0%} of the "
        f"traffic ({_step_name(nxt, steps)})"
    )
    if not monitoring.change_rollout(
        rollout["id"],
        pending="rollout_step",
        values={
            **_DONE,
            "step": nxt,
            "share": share,
            # periods tile: the new step's period starts where the judged one ended
            "step_started_at": datetime.fromisoformat(pending["period_end"]),
        },
        audit=_audit(
            rollout,
            "rollout_step",
            share=share,
            step=nxt,
            reasons=[message, *pending.get("judged", [])],
            by=by,
            extra={"checks": pending.get("checks", [])},
        ),
        url=settings.monitoring_db_url,
    ):
        raise Conflict(f"{model}: the ramp of rollout {rollout['id']} was settled by another")
    log.info(message)
    return RolloutResult(model, "rollout_step", version, share, nxt, message)


def _complete(rollout: dict[str, Any], *, context: RunContext, settings: Settings) -> RolloutResult:
    """The last step: promote through the compare-and-set, then clear the candidate."""
    from driftline.promotion import ChampionMoved, PromotionInFlight, promote

    model, version, steps = rollout["model"], rollout["candidate_version"], rollout["steps"]
    pending = rollout["pending"]
    shares = " -> ".join(f"{s:.0%}" for s in steps[:-1])
    try:
        promote(
            model,
            version,
            expected_champion=rollout["champion_version"],
            context=context,
            reasons=[
                f"canary rollout of v{version}: every step held ({shares}), each for at "
                f"least {rollout['step_minutes']} minutes",
                *pending.get("judged", []),
            ],
            metrics={"rollout_id": rollout["id"], "checks": pending.get("checks", [])},
            actor=context.triggered_by,
            settings=settings,
        )
    except ChampionMoved as moved:
        return _finish_abort(
            rollout,
            by=context.triggered_by,
            reason=str(moved),
            checks=None,
            expected="rollout_completed",
            settings=settings,
        )
    except PromotionInFlight:
        monitoring.change_rollout(
            rollout["id"],
            pending="rollout_completed",
            values=_DONE,
            url=settings.monitoring_db_url,
        )
        raise
    return _finish_complete(rollout, by=context.triggered_by, settings=settings)


def _clear_candidate(model: str, version: str, settings: Settings) -> None:
    """The alias first (routing stops), then the share; both idempotent."""
    if registry.alias_version(model, registry.CANDIDATE, settings) == version:
        registry.set_alias(model, registry.CANDIDATE, None, settings)
    registry.delete_tag(model, version, SHARE_TAG, settings)


def _finish_complete(rollout: dict[str, Any], *, by: str, settings: Settings) -> RolloutResult:
    model, version, steps = rollout["model"], rollout["candidate_version"], rollout["steps"]
    _clear_candidate(model, version, settings)
    last = len(steps) - 1
    message = (
        f"{model}: canary rollout of v{version} completed: champion "
        f"{_v(rollout['champion_version'])} -> v{version}; candidate alias cleared"
    )
    if not monitoring.change_rollout(
        rollout["id"],
        pending="rollout_completed",
        values={
            **_DONE,
            "status": "promoted",
            "step": last,
            "share": 1.0,
            "ended_at": _now(),
            "end_reason": message,
        },
        audit=_audit(
            rollout,
            "rollout_completed",
            share=1.0,
            step=last,
            reasons=[message],
            by=by,
            champion_after=version,
        ),
        url=settings.monitoring_db_url,
    ):
        raise Conflict(f"{model}: the completion of rollout {rollout['id']} was settled by another")
    log.info(message)
    return RolloutResult(model, "rollout_completed", version, 1.0, last, message)


def _finish_abort(
    rollout: dict[str, Any],
    *,
    by: str,
    reason: str,
    checks: list[dict[str, Any]] | None,
    expected: str,
    settings: Settings,
) -> RolloutResult:
    model, version = rollout["model"], rollout["candidate_version"]
    _clear_candidate(model, version, settings)
    message = (
        f"{model}: canary rollout of v{version} aborted at {rollout['share']:.0%} "
        f"({_step_name(rollout['step'], rollout['steps'])}): {reason}; candidate alias and "
        f"rollout_share cleared, champion {_v(rollout['champion_version'])} untouched"
    )
    registry.set_tags(
        model, version, {"decision": "rollout_aborted", "decision_reasons": message}, settings
    )
    if not monitoring.change_rollout(
        rollout["id"],
        pending=expected,
        values={**_DONE, "status": "aborted", "share": 0.0, "ended_at": _now()}
        | {"end_reason": message},
        audit=_audit(
            rollout,
            "rollout_aborted",
            share=0.0,
            step=-1,
            reasons=[message],
            by=by,
            extra={"reached_step": rollout["step"], "checks": checks or []},
        ),
        url=settings.monitoring_db_url,
    ):
        raise Conflict(f"{model}: the abort of rollout {rollout['id']} was settled by another")
    log.warning(message)
    return RolloutResult(model, "rollout_aborted", version, 0.0, -1, message)


def abort(
    model: str,
    *,
    reason: str,
    actor: str,
    context: RunContext | None = None,
    checks: list[dict[str, Any]] | None = None,
    settings: Settings | None = None,
) -> RolloutResult:
    """End the open rollout: the candidate alias and its share cleared, audited; the
    champion untouched. By the rollout DAG on a broken guard, or by an operator."""
    from driftline.promotion import fault_pause

    settings = settings or get_settings()
    url = settings.monitoring_db_url
    if not reason.strip():
        raise InvalidInput("aborting a rollout needs a reason: it goes into the audit log")
    context = context or RunContext(
        dag_id="cli", run_id=f"rollout-abort-{_now():%Y%m%dT%H%M%S%f}", triggered_by=actor
    )
    if monitoring.open_rollout(model, url=url) is None:
        raise InvalidInput(f"{model} has no rollout in progress; nothing to abort")
    _in_flight(settle(model, actor=actor, run_key=context.key, settings=settings))
    rollout = monitoring.open_rollout(model, url=url)
    if rollout is None:
        message = f"{model}: the rollout ended while settling; nothing left to abort"
        return RolloutResult(model, "noop", None, 0.0, -1, message)
    if not monitoring.change_rollout(
        rollout["id"],
        pending=None,
        values={
            "pending_action": "rollout_aborted",
            "pending": _pending(context, actor, abort_reason=reason, checks=checks),
            "lease_until": _lease(),
        },
        url=url,
    ):
        raise RolloutInFlight(f"{model}: the rollout changed while aborting; run it again")
    fault_pause()
    return _finish_abort(
        _reload(rollout["id"], model, url),
        by=actor,
        reason=reason,
        checks=checks,
        expected="rollout_aborted",
        settings=settings,
    )


def _pause_or_resume(
    model: str, *, pause: bool, actor: str, reason: str, settings: Settings | None
) -> RolloutResult:
    settings = settings or get_settings()
    url = settings.monitoring_db_url
    rollout = monitoring.open_rollout(model, url=url)
    if rollout is None:
        raise InvalidInput(f"{model} has no rollout in progress")
    before, after = ("active", "paused") if pause else ("paused", "active")
    action = "rollout_paused" if pause else "rollout_resumed"
    version, share, step = rollout["candidate_version"], rollout["share"], rollout["step"]
    if rollout["status"] == after:
        message = f"{model}: the rollout of v{version} is already {after}"
        return RolloutResult(model, "noop", version, share, step, message)
    message = (
        f"{model}: rollout of v{version} {after} by {actor} at {share:.0%} "
        f"({_step_name(step, rollout['steps'])})"
        + (": ramping stops, the share stays, guards still abort" if pause else "")
        + (f" — {reason}" if reason else "")
    )
    context = RunContext(dag_id="cli", run_id=f"{action}-{_now():%Y%m%dT%H%M%S%f}")
    audit = _audit(
        {**rollout, "pending": _pending(context, actor, reason=reason)},
        action,
        share=share,
        step=step,
        reasons=[message],
        by=actor,
    )
    if not monitoring.change_rollout(
        rollout["id"], statuses=(before,), values={"status": after}, audit=audit, url=url
    ):
        raise Conflict(f"{model}: the rollout changed meanwhile; run it again")
    log.info(message)
    return RolloutResult(model, action, version, share, step, message)


def pause(
    model: str, *, actor: str, reason: str = "", settings: Settings | None = None
) -> RolloutResult:
    """Stop ramping; the candidate keeps its share, and a broken guard still aborts."""
    return _pause_or_resume(model, pause=True, actor=actor, reason=reason, settings=settings)


def resume(
    model: str, *, actor: str, reason: str = "", settings: Settings | None = None
) -> RolloutResult:
    return _pause_or_resume(model, pause=False, actor=actor, reason=reason, settings=settings)


def status(model: str, *, settings: Settings | None = None) -> dict[str, Any]:
    """The open rollout (or the last one) with the current step's live comparison."""
    settings = settings or get_settings()
    url = settings.monitoring_db_url
    rollout = monitoring.open_rollout(model, url=url)
    if rollout is None:
        last = monitoring.rollout_log(model, limit=1, url=url)
        if not last:
            return {"model": model, "state": "none"}
        rollout = last[0]
    entry: dict[str, Any] = {
        "model": model,
        "state": rollout["status"],
        "rollout_id": rollout["id"],
        "candidate": rollout["candidate_version"],
        "champion": rollout["champion_version"],
        "step": rollout["step"],
        "share": rollout["share"],
        "steps": rollout["steps"],
        "step_minutes": rollout["step_minutes"],
        "step_started_at": rollout["step_started_at"],
        "pending": rollout["pending_action"],
        "ended_at": rollout["ended_at"],
        "end_reason": rollout["end_reason"],
    }
    began = rollout["step_started_at"]
    if rollout["ended_at"] is None and began is not None:
        spec = load_spec(model, settings.models_dir)
        verdict = judge_step(spec, rollout, at=_now(), settings=settings)
        entry["verdict_now"] = verdict.as_dict()
    return entry


def render_status(entry: dict[str, Any]) -> list[str]:
    """Lines for `driftline status` and `driftline rollout status`."""
    if entry["state"] == "none":
        return ["  rollout: none"]
    steps = " -> ".join(f"{s:.0%}" for s in entry["steps"])
    head = (
        f"  rollout #{entry['rollout_id']}: v{entry['candidate']} vs champion "
        f"{_v(entry['champion'])}  {entry['state']}  share {entry['share']:.0%} "
        f"(step {entry['step'] + 1} of {len(entry['steps'])}: {steps})"
    )
    lines = [head]
    if entry.get("pending"):
        lines.append(f"    change in flight: {entry['pending']}")
    if entry.get("ended_at"):
        lines.append(f"    ended {entry['ended_at']:%Y-%m-%d %H:%M:%S}: {entry['end_reason']}")
    verdict = entry.get("verdict_now")
    if verdict:
        lines.append(f"    now: {verdict['outcome']} — {'; '.join(verdict['reasons'])}")
        for checked in verdict["checks"]:
            lines.append(f"      [{checked['state']}] {checked['message']}")
    return lines
