"""The promotion policy: a pure function from metrics to a decision with its reasons.

Inputs are the challenger's and (if any) the champion's metrics on the same holdout; the
rules come from the model spec's ``promotion`` block. With no champion yet, the floors and
the holdout size alone decide. Every rule that fails becomes a reason; a promotion carries
the reasons that made it pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from driftline.specs import PromotionSpec

HIGHER_IS_BETTER = {
    "pr_auc": True,
    "roc_auc": True,
    "recall_at_fpr": True,
    "log_loss": False,
    "brier": False,
}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        return "promote" if self.promote else "reject"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome}


def _gain(metric: str, challenger: float, champion: float) -> float:
    """How much better the challenger is (positive = better), whatever the metric's direction."""
    return challenger - champion if HIGHER_IS_BETTER[metric] else champion - challenger


def decide(
    policy: PromotionSpec,
    *,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    holdout_rows: int,
    holdout_positives: int,
) -> Decision:
    """Promote only when every rule holds; otherwise reject with every failed rule."""
    failures: list[str] = []
    passes: list[str] = []

    if holdout_rows < policy.min_holdout_rows:
        failures.append(f"holdout too small: {holdout_rows} rows < {policy.min_holdout_rows}")
    if holdout_positives < policy.min_holdout_positives:
        failures.append(
            f"holdout has too few positives: {holdout_positives} < {policy.min_holdout_positives}"
        )

    for metric, floor in sorted(policy.floors.items()):
        value = challenger[metric]
        ok = value >= floor if HIGHER_IS_BETTER[metric] else value <= floor
        word = ">=" if HIGHER_IS_BETTER[metric] else "<="
        (passes if ok else failures).append(
            f"{metric} {value:.4f} {word if ok else 'fails'} floor {floor}"
        )

    if champion is None:
        passes.append("no champion yet: the floors decide")
    else:
        primary = policy.primary_metric
        gain = _gain(primary, challenger[primary], champion[primary])
        if gain >= policy.min_improvement:
            passes.append(
                f"{primary} improves by {gain:+.4f} ({champion[primary]:.4f} -> "
                f"{challenger[primary]:.4f}), at least {policy.min_improvement}"
            )
        else:
            failures.append(
                f"{primary} improves by {gain:+.4f} ({champion[primary]:.4f} -> "
                f"{challenger[primary]:.4f}), less than the required {policy.min_improvement}"
            )
        for metric, tolerance in sorted(policy.max_regression.items()):
            regression = -_gain(metric, challenger[metric], champion[metric])
            if regression > tolerance:
                failures.append(
                    f"{metric} regresses by {regression:.4f} ({champion[metric]:.4f} -> "
                    f"{challenger[metric]:.4f}), more than the allowed {tolerance}"
                )
            else:
                passes.append(f"{metric} within tolerance ({regression:+.4f} <= {tolerance})")

    if failures:
        return Decision(promote=False, reasons=failures)
    return Decision(promote=True, reasons=passes)
