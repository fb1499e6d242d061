"""The promotion policy: a pure function from evidence to a decision with its reasons.

The evidence is the challenger's and (if any) the champion's metrics on the same
comparison set — labeled rows after *both* models' training data ends — plus a paired
bootstrap interval of the primary metric's difference on those rows and the guard metrics
per declared slice. The rules come from the model spec's ``promotion`` block.

Three outcomes:

* ``promote`` — every rule holds: the floors, the interval's *lower bound* of the primary
  metric's gain clears ``min_improvement``, no guard metric regresses beyond
  ``max_regression`` overall or in any judged slice;
* ``reject`` — some rule fails; every failed rule is a reason;
* ``inconclusive`` — a champion exists but too few rows (or positives) are newer than both
  models' training data to compare them fairly. The champion stays; the reasons say what
  was missing and from which as-of date a fair comparison becomes possible.

With no champion yet, the floors and the holdout size alone decide. The bootstrap
(:func:`paired_interval`) is pure numpy with a fixed seed: the same rows give the same
interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from driftline.specs import PromotionSpec

HIGHER_IS_BETTER = {
    "pr_auc": True,
    "roc_auc": True,
    "recall_at_fpr": True,
    "log_loss": False,
    "brier": False,
}
PROMOTE, REJECT, INCONCLUSIVE = "promote", "reject", "inconclusive"
# resamples are drawn in chunks so memory stays flat (chunk x rows float64 matrices)
_CHUNK = 64
_EPS = 1e-7


@dataclass(frozen=True)
class Interval:
    """A paired bootstrap interval of the challenger's gain in one metric (positive = better)."""

    metric: str
    gain: float
    low: float
    high: float
    level: float
    resamples: int

    def describe(self) -> str:
        return (
            f"{self.level:.0%} interval [{self.low:+.4f}, {self.high:+.4f}] "
            f"over {self.resamples} paired resamples"
        )


@dataclass(frozen=True)
class SliceEvidence:
    """Guard metrics of both models on the rows of one slice value (None: not judged)."""

    column: str
    value: str
    rows: int
    positives: int
    challenger: dict[str, float] | None = None
    champion: dict[str, float] | None = None

    @property
    def name(self) -> str:
        return f"{self.column}={self.value}"


@dataclass(frozen=True)
class Evidence:
    """What the policy judges. ``rows``/``positives`` count the comparison set."""

    challenger: dict[str, float]
    champion: dict[str, float] | None
    rows: int
    positives: int
    champion_version: str | None = None
    interval: Interval | None = None
    slices: tuple[SliceEvidence, ...] = ()
    comparison_window: tuple[str, str] | None = None
    fair_from: str | None = None

    @property
    def has_champion(self) -> bool:
        return self.champion_version is not None or self.champion is not None


@dataclass(frozen=True)
class Decision:
    outcome: str
    reasons: list[str] = field(default_factory=list)

    @property
    def promote(self) -> bool:
        return self.outcome == PROMOTE

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "promote": self.promote}


def _gain(metric: str, challenger: float, champion: float) -> float:
    """How much better the challenger is (positive = better), whatever the metric's direction."""
    return challenger - champion if HIGHER_IS_BETTER[metric] else champion - challenger


def _weighted(
    metric: str, labels: np.ndarray, scores: np.ndarray, weights: np.ndarray, target_fpr: float
) -> np.ndarray:
    """``metric`` of ``scores`` under each row of ``weights`` (resample counts), vectorized.

    Ranking metrics group tied scores the way scikit-learn does, so with weights of one they
    equal ``average_precision_score`` / ``roc_auc_score`` / recall at ``target_fpr``.
    """
    scores = np.clip(scores, _EPS, 1 - _EPS)
    if metric == "log_loss":
        per_row = -(labels * np.log(scores) + (1 - labels) * np.log(1 - scores))
        return weights @ per_row / weights.sum(axis=1)
    if metric == "brier":
        return weights @ (scores - labels) ** 2 / weights.sum(axis=1)
    order = np.argsort(-scores, kind="stable")
    ordered, y = scores[order], labels[order]
    w = weights[:, order]
    ends = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
    tp = np.cumsum(w * y, axis=1)[:, ends]
    fp = np.cumsum(w * (1 - y), axis=1)[:, ends]
    positives, negatives = tp[:, -1:], fp[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "pr_auc":
            precision = tp / np.maximum(tp + fp, _EPS)
            recall_step = np.diff(tp, axis=1, prepend=0.0) / positives
            return (recall_step * precision).sum(axis=1)
        tpr = np.hstack([np.zeros((len(w), 1)), tp / positives])
        fpr = np.hstack([np.zeros((len(w), 1)), fp / negatives])
    if metric == "roc_auc":
        return (np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(axis=1)
    if metric == "recall_at_fpr":
        return np.array([np.interp(target_fpr, f, t) for f, t in zip(fpr, tpr, strict=True)])
    raise ValueError(f"unknown metric {metric!r}")


def _binary(labels: np.ndarray) -> bool:
    return bool(len(labels)) and bool(np.isin(labels, (0.0, 1.0)).all()) and labels.max() == 1.0


class _PrCurve:
    """PR-AUC of one model's scores under bootstrap resamples, from the resampled rows
    themselves: the same values as :func:`_weighted` with the resamples' count weights, bit
    for bit, at a fraction of its cost.

    ``_weighted`` reorders a dense resamples x rows weight matrix by score and takes two
    cumulative sums over it. Yet PR-AUC changes only at the tie groups that hold a positive
    (a few hundred of a holdout's hundred thousand rows): everything in between only adds
    false positives. So each row is mapped once to the positive group that closes its
    stretch of the ranking, and a resample is a bincount of its picks by that stretch and
    label. The counts are the same integers ``_weighted`` accumulates in float64 (exact
    below 2**53), and its terms are laid into a row of all tie groups, zero elsewhere, in the
    memory order ``_weighted``'s arrays have (Fortran, from its column indexing), before the
    same ``sum``: the summation order is unchanged, so the result is identical
    (tests/unit/test_policy.py compares them).
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        scores = np.clip(scores, _EPS, 1 - _EPS)
        order = np.argsort(-scores, kind="stable")
        ordered, y = scores[order], labels[order]
        ends = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
        group = np.searchsorted(ends, np.arange(len(ordered)))  # tie group of each position
        self.groups = len(ends)
        # the tie groups holding a positive; a stretch ends with one of them (or is the tail)
        self.closing = np.unique(group[y == 1])
        stretch = np.searchsorted(self.closing, group)
        self.bins = 2 * (len(self.closing) + 1)  # (stretch, label) pairs
        self.code = np.empty(len(ordered), dtype=np.int64)
        self.code[order] = stretch * 2 + y.astype(np.int64)

    def resampled(self, picks: np.ndarray) -> np.ndarray:
        """PR-AUC under each row of ``picks`` (row indices drawn with replacement)."""
        size = len(picks)
        # one resample at a time: its codes stay in the CPU cache (3x faster than one
        # bincount over the whole chunk with offsets)
        counts = np.stack([np.bincount(self.code.take(row), minlength=self.bins) for row in picks])
        counts = counts.reshape(size, -1, 2)[:, :-1].astype(float)  # the tail holds no positive
        tp = np.cumsum(counts[:, :, 1], axis=1)
        fp = np.cumsum(counts[:, :, 0], axis=1)
        positives = tp[:, -1:]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / np.maximum(tp + fp, _EPS)
            recall_step = np.diff(tp, axis=1, prepend=0.0) / positives
        terms = np.zeros((size, self.groups), order="F")
        terms[:, self.closing] = recall_step * precision
        return terms.sum(axis=1)


def paired_interval(
    metric: str,
    labels: np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray,
    *,
    level: float,
    resamples: int,
    seed: int,
    target_fpr: float = 0.01,
) -> Interval:
    """Bootstrap the challenger's gain in ``metric`` on the same resampled rows for both.

    Each resample draws the rows with replacement once and scores both models on it, so the
    interval measures the difference, not two independent noises. Percentile interval at
    ``level`` (two-sided), fixed ``seed``.
    """
    labels = np.asarray(labels, dtype=float)
    challenger_scores = np.asarray(challenger_scores, dtype=float)
    champion_scores = np.asarray(champion_scores, dtype=float)
    rows = len(labels)
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    ones = np.ones((1, rows))
    point = sign * (
        _weighted(metric, labels, challenger_scores, ones, target_fpr)[0]
        - _weighted(metric, labels, champion_scores, ones, target_fpr)[0]
    )
    rng = np.random.default_rng(seed)
    curves = None
    if metric == "pr_auc" and _binary(labels):
        curves = (_PrCurve(labels, challenger_scores), _PrCurve(labels, champion_scores))
    gains = []
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        picks = rng.integers(0, rows, size=(size, rows))
        if curves is not None:
            gains.append(sign * (curves[0].resampled(picks) - curves[1].resampled(picks)))
            continue
        offsets = (np.arange(size) * rows)[:, None]
        weights = np.bincount((picks + offsets).ravel(), minlength=size * rows)
        weights = weights.reshape(size, rows).astype(float)
        gains.append(
            sign
            * (
                _weighted(metric, labels, challenger_scores, weights, target_fpr)
                - _weighted(metric, labels, champion_scores, weights, target_fpr)
            )
        )
    values = np.concatenate(gains)
    values = values[np.isfinite(values)]  # a resample without positives has no PR-AUC
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail]) if len(values) else (np.nan, np.nan)
    return Interval(
        metric=metric,
        gain=float(point),
        low=float(low),
        high=float(high),
        level=level,
        resamples=resamples,
    )


def _too_small(policy: PromotionSpec, evidence: Evidence, what: str) -> list[str]:
    problems = []
    if evidence.rows < policy.min_holdout_rows:
        problems.append(f"{what} too small: {evidence.rows} rows < {policy.min_holdout_rows}")
    if evidence.positives < policy.min_holdout_positives:
        problems.append(
            f"{what} has too few positives: {evidence.positives} < {policy.min_holdout_positives}"
        )
    return problems


def _guards(
    policy: PromotionSpec,
    challenger: dict[str, float],
    champion: dict[str, float],
    where: str,
    passes: list[str],
    failures: list[str],
) -> None:
    for metric, tolerance in sorted(policy.max_regression.items()):
        regression = -_gain(metric, challenger[metric], champion[metric])
        if regression > tolerance:
            failures.append(
                f"{metric}{where} regresses by {regression:.4f} ({champion[metric]:.4f} -> "
                f"{challenger[metric]:.4f}), more than the allowed {tolerance}"
            )
        else:
            passes.append(f"{metric}{where} within tolerance ({regression:+.4f} <= {tolerance})")


def decide(policy: PromotionSpec, evidence: Evidence) -> Decision:
    """Promote only when every rule holds; reject with every failed rule; or inconclusive."""
    window = evidence.comparison_window
    span = f" [{window[0]}, {window[1]})" if window else ""
    if evidence.has_champion:
        missing = _too_small(policy, evidence, "comparison set")
        if evidence.champion is None and not missing:
            missing = ["the champion was not scored on it"]
        if missing:
            when = (
                f"; a fair comparison becomes possible as of {evidence.fair_from}"
                if evidence.fair_from
                else ""
            )
            return Decision(
                INCONCLUSIVE,
                [
                    f"inconclusive: no fair comparison — {evidence.rows} labeled rows "
                    f"({evidence.positives} positives) are newer than both models' training "
                    f"data{span}: " + "; ".join(missing) + when,
                    "the champion stays",
                ],
            )

    failures: list[str] = []
    passes: list[str] = []
    failures += _too_small(policy, evidence, "holdout")

    challenger = evidence.challenger
    champion = evidence.champion
    for metric, floor in sorted(policy.floors.items()):
        value = challenger[metric]
        ok = value >= floor if HIGHER_IS_BETTER[metric] else value <= floor
        word = ">=" if HIGHER_IS_BETTER[metric] else "<="
        if ok:
            passes.append(f"{metric} {value:.4f} {word} floor {floor}")
            continue
        failing = f"{metric} {value:.4f} fails floor {floor}"
        held = champion[metric] if champion is not None else None
        if (
            not policy.strict_floors
            and held is not None
            and not (held >= floor if HIGHER_IS_BETTER[metric] else held <= floor)
            and _gain(metric, value, held) > 0
        ):
            # the model serving now fails the same floor on the same rows, and does worse
            passes.append(
                f"{failing}, but the champion fails it too on the same rows ({held:.4f}) and "
                f"does worse: the floor does not keep the better model out (strict_floors: false)"
            )
        else:
            failures.append(failing)

    if champion is None:
        passes.append("no champion yet: the floors decide")
    else:
        primary = policy.primary_metric
        gain = _gain(primary, challenger[primary], champion[primary])
        interval = evidence.interval
        low = interval.low if interval is not None else gain
        bounds = f", {interval.describe()}" if interval is not None else ""
        text = (
            f"{primary} improves by {gain:+.4f} ({champion[primary]:.4f} -> "
            f"{challenger[primary]:.4f}) on{span or ' the comparison set'}{bounds}"
        )
        if low >= policy.min_improvement:
            passes.append(f"{text}; lower bound {low:+.4f} >= {policy.min_improvement}")
        else:
            failures.append(
                f"{text}; lower bound {low:+.4f} is less than the required {policy.min_improvement}"
            )
        _guards(policy, challenger, champion, "", passes, failures)
        for piece in evidence.slices:
            if piece.challenger is None or piece.champion is None:
                passes.append(
                    f"slice {piece.name} not judged: {piece.rows} rows, {piece.positives} "
                    f"positives (< {policy.min_holdout_positives} or one class only)"
                )
                continue
            where = f" in slice {piece.name}"
            _guards(policy, piece.challenger, piece.champion, where, passes, failures)

    if failures:
        return Decision(REJECT, failures)
    return Decision(PROMOTE, passes)
