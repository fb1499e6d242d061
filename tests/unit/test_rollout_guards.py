"""The canary's guards as a truth table: prediction-log rows in, ramp / wait / abort out.

Rows are built where the right answer is known: the same score distribution on both arms
(PSI near 0), errors or latency put on one arm, scores shifted, or the candidate's scores
shuffled against the labels (same distribution, no skill: PR-AUC drops, PSI does not).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from driftline.rollout import ABORT, RAMP, WAIT, judge_rows, psi
from driftline.serving.routing import stable_fraction
from driftline.specs import RolloutGuards

GUARDS = RolloutGuards(
    max_error_rate=0.02,
    max_p99_latency_ms=50,
    max_score_psi=0.2,
    max_pr_auc_drop=0.05,
    min_requests=200,
    min_labeled_positives=10,
)
START = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
STEP_MINUTES = 10.0
N = 600  # rows per arm; 1 in 20 is a fraud


def _arm(
    arm: str,
    version: str,
    *,
    n: int = N,
    at: datetime = START,
    errors: float = 0.0,
    latency: float = 5.0,
    shift: float = 0.0,
    shuffled: bool = False,
    first: int = 0,
    seed: int = 7,
    fraud_beta: tuple[float, float] = (6, 2),
) -> pd.DataFrame:
    """``n`` rows of one arm scored at ``at`` + i seconds, transactions t<first+i>."""
    rng = np.random.default_rng(seed)
    ids = np.arange(first, first + n)
    fraud = ids % 20 == 0
    scores = np.where(fraud, rng.beta(*fraud_beta, n), rng.beta(1, 12, n))
    if shuffled:
        scores = rng.permutation(scores)
    scores = np.clip(scores + shift, 0, 1)
    failed = np.arange(n) < round(errors * n)
    return pd.DataFrame(
        {
            "scored_at": [at + timedelta(seconds=float(i) / 2) for i in range(n)],
            "event_timestamp": [at - timedelta(days=30)] * n,
            "transaction_id": [f"t{i}" for i in ids],
            "version": version,
            "arm": arm,
            "score": np.where(failed, np.nan, scores),
            "latency_ms": latency,
            "status": np.where(failed, "error", "ok"),
        }
    )


def _labels(n: int = 4 * N) -> pd.DataFrame:
    ids = np.arange(n)
    return pd.DataFrame({"transaction_id": [f"t{i}" for i in ids], "label": (ids % 20 == 0)})


def _healthy_champion() -> pd.DataFrame:
    return _arm("champion", "1", first=N)


def _verdict(*frames: pd.DataFrame, minutes: float = STEP_MINUTES + 1, labels=None):
    return judge_rows(
        GUARDS,
        pd.concat(frames, ignore_index=True),
        _labels() if labels is None else labels,
        candidate_version="2",
        champion_version="1",
        step_minutes=STEP_MINUTES,
        start=START,
        end=START + timedelta(minutes=minutes),
    )


CASES = [
    ("healthy, step lasted", [_arm("candidate", "2")], {}, RAMP, "every guard held"),
    (
        "healthy, step too young",
        [_arm("candidate", "2")],
        {"minutes": 6},
        WAIT,
        "the step has lasted 6.00 of 10.0 minutes",
    ),
    (
        "candidate below min_requests",
        [_arm("candidate", "2", n=150)],
        {},
        WAIT,
        "min_requests: too few requests to judge: candidate v2 150 of 200",
    ),
    (
        "candidate errors, champion clean",
        [_arm("candidate", "2", errors=0.05)],
        {},
        ABORT,
        "max_error_rate: candidate 5.00%, champion 0.00%, ceiling 2.00%",
    ),
    (
        "candidate errors abort before the step has lasted",
        [_arm("candidate", "2", errors=0.05)],
        {"minutes": 3},
        ABORT,
        "the candidate is over it and worse over [2026-11-26 12:00:00, 2026-11-26 12:03:00) UTC",
    ),
    (
        "a few errors under the ceiling",
        [_arm("candidate", "2", errors=0.01)],
        {},
        RAMP,
        "every guard held",
    ),
    (
        "candidate slow",
        [_arm("candidate", "2", latency=80.0)],
        {},
        ABORT,
        "max_p99_latency_ms: candidate 80.0 ms, champion 5.0 ms, ceiling 50.0 ms",
    ),
    (
        "candidate's scores shifted",
        [_arm("candidate", "2", shift=0.3)],
        {},
        ABORT,
        "max_score_psi: PSI of the candidate's 600 scores against the champion's 600:",
    ),
    (
        "candidate without skill, same score distribution",
        [_arm("candidate", "2", shuffled=True)],
        {},
        ABORT,
        "max_pr_auc_drop: PR-AUC candidate",
    ),
    (
        "no matured labels: PR-AUC not judged, the rest holds",
        [_arm("candidate", "2", shuffled=True)],
        {"labels": _labels().iloc[:0]},
        RAMP,
        "every guard held",
    ),
]


@pytest.mark.parametrize(
    ("case", "candidate", "options", "outcome", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_guard_truth_table(
    case: str, candidate: list[pd.DataFrame], options: dict, outcome: str, reason: str
) -> None:
    verdict = _verdict(_healthy_champion(), *candidate, **options)
    assert verdict.outcome == outcome, (case, verdict.reasons)
    assert any(reason in line for line in verdict.reasons), verdict.reasons


def test_both_arms_failing_is_the_service_not_the_candidate() -> None:
    verdict = _verdict(
        _arm("champion", "1", first=N, errors=0.06), _arm("candidate", "2", errors=0.05)
    )
    assert verdict.outcome == WAIT
    assert "both arms over it: the service, not the model" in verdict.reasons[0]
    state = {c["guard"]: c["state"] for c in verdict.checks}
    assert state["max_error_rate"] == "shared"


def test_champion_below_min_requests_waits() -> None:
    verdict = _verdict(_arm("champion", "1", n=100, first=N), _arm("candidate", "2"))
    assert verdict.outcome == WAIT
    assert "champion v1 100 of 200" in verdict.reasons[0]


def test_pr_auc_needs_matured_positives_on_both_arms() -> None:
    # 600 rows with one fraud in 20 = 30 positives; only the first 100 transactions matured
    verdict = _verdict(
        _healthy_champion(), _arm("candidate", "2", shuffled=True), labels=_labels(100)
    )
    checks = {c["guard"]: c for c in verdict.checks}
    assert checks["max_pr_auc_drop"]["state"] == "not_judged"
    assert (
        "matured positives candidate 5, champion 0 (needs 10 each)"
        in (checks["max_pr_auc_drop"]["message"])
    )


def test_only_the_period_and_the_rollouts_versions_count() -> None:
    """Period alignment: errors before the step began, an earlier candidate's rows and the
    champion version answering on the candidate arm are not this step's evidence."""
    before = _arm("candidate", "2", errors=1.0, at=START - timedelta(minutes=5), first=3 * N)
    after = _arm("candidate", "2", errors=1.0, at=START + timedelta(minutes=12), first=3 * N)
    earlier_candidate = _arm("candidate", "7", errors=1.0, latency=900.0)
    wrong_arm = _arm("candidate", "1", shift=0.5)
    verdict = _verdict(
        _healthy_champion(), _arm("candidate", "2"), before, after, earlier_candidate, wrong_arm
    )
    assert verdict.outcome == RAMP, verdict.reasons
    assert verdict.period == ("2026-11-26T12:00:00+00:00", "2026-11-26T12:11:00+00:00")
    requests = {c["guard"]: (c["candidate"], c["champion"]) for c in verdict.checks}
    assert requests["max_error_rate"] == (0.0, 0.0)


def test_min_requests_counts_the_period_only() -> None:
    # 500 candidate rows, but 400 of them before the step began
    early = _arm("candidate", "2", n=400, at=START - timedelta(minutes=20))
    late = _arm("candidate", "2", n=100, first=400)
    verdict = _verdict(_healthy_champion(), early, late)
    assert verdict.outcome == WAIT
    assert "candidate v2 100 of 200" in verdict.reasons[0]


def test_psi_is_zero_for_one_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    scores = rng.beta(1, 12, 5000)
    assert psi(scores, rng.permutation(scores)) == pytest.approx(0.0, abs=1e-12)
    assert psi(scores, np.clip(scores + 0.3, 0, 1)) > 1.0


def test_stable_fraction_is_the_contracts_hash() -> None:
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"fraud_detection:42").digest()[:8], "big") / 2**64
    assert stable_fraction("fraud_detection", 42) == expected
    shares = [stable_fraction("fraud_detection", card) for card in range(20000)]
    assert 0.04 < np.mean(np.array(shares) < 0.05) < 0.06


def test_a_pr_auc_gap_that_other_cards_show_by_chance_does_not_abort() -> None:
    """One model, one score process, two samples of different cards (30 frauds each): the
    champion's sample happens to rank better by 0.16. A healthy candidate; its interval
    says so, and the step ramps. A point comparison against 0.05 aborted it."""
    weaker = (2, 4)  # a model whose frauds and legitimate scores overlap
    champion = _arm("champion", "1", first=N, seed=11, fraud_beta=weaker)
    candidate = _arm("candidate", "2", seed=7, fraud_beta=weaker)
    verdict = _verdict(champion, candidate)
    check = {c["guard"]: c for c in verdict.checks}["max_pr_auc_drop"]
    assert check["champion"] - check["candidate"] > 0.15  # the gap is there
    assert check["state"] == "held", check["message"]
    assert verdict.outcome == RAMP, verdict.reasons
    assert "90% interval [" in check["message"]


def test_a_real_pr_auc_drop_is_caught_through_the_interval() -> None:
    """The same candidate without skill (its scores shuffled against the labels): the whole
    interval is above the limit."""
    verdict = _verdict(_healthy_champion(), _arm("candidate", "2", shuffled=True))
    check = {c["guard"]: c for c in verdict.checks}["max_pr_auc_drop"]
    low = float(check["message"].split("interval [")[1].split(",")[0])
    assert low > GUARDS.max_pr_auc_drop and check["state"] == "broken"
    assert verdict.outcome == ABORT
