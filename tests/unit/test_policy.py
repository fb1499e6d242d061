"""The promotion policy as a truth table, and the compare-and-set it relies on."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from driftline import monitoring
from driftline.policy import Evidence, Interval, SliceEvidence, decide, paired_interval
from driftline.specs import PromotionSpec

POLICY = PromotionSpec(
    primary_metric="pr_auc",
    min_improvement=0.01,
    floors={"pr_auc": 0.3, "roc_auc": 0.8},
    max_regression={"roc_auc": 0.01, "log_loss": 0.005},
    min_holdout_rows=1000,
    min_holdout_positives=20,
    confidence=0.9,
    bootstrap_resamples=200,
)
CHAMPION = {"pr_auc": 0.50, "roc_auc": 0.90, "log_loss": 0.050, "brier": 0.01, "recall_at_fpr": 0.5}


def _m(**changes: float) -> dict[str, float]:
    return {**CHAMPION, **changes}


@pytest.mark.parametrize(
    ("case", "challenger", "champion", "rows", "positives", "outcome", "reason"),
    [
        ("no champion, above floors", _m(), None, 5000, 60, "promote", "no champion yet"),
        (
            "no champion, below a floor",
            _m(pr_auc=0.2),
            None,
            5000,
            60,
            "reject",
            "pr_auc 0.2000 fails floor 0.3",
        ),
        ("better", _m(pr_auc=0.55), CHAMPION, 5000, 60, "promote", "pr_auc improves by +0.0500"),
        (
            "marginally better",
            _m(pr_auc=0.505),
            CHAMPION,
            5000,
            60,
            "reject",
            "less than the required 0.01",
        ),
        ("equal", _m(), CHAMPION, 5000, 60, "reject", "improves by +0.0000"),
        ("worse", _m(pr_auc=0.45), CHAMPION, 5000, 60, "reject", "improves by -0.0500"),
        (
            "guard metric regresses",
            _m(pr_auc=0.6, roc_auc=0.88),
            CHAMPION,
            5000,
            60,
            "reject",
            "roc_auc regresses by 0.0200",
        ),
        (
            "lower-is-better guard regresses",
            _m(pr_auc=0.6, log_loss=0.06),
            CHAMPION,
            5000,
            60,
            "reject",
            "log_loss regresses by 0.0100",
        ),
        (
            "guard within tolerance",
            _m(pr_auc=0.6, roc_auc=0.895),
            CHAMPION,
            5000,
            60,
            "promote",
            "roc_auc within tolerance",
        ),
        (
            "too-small holdout",
            _m(pr_auc=0.6),
            CHAMPION,
            900,
            60,
            "inconclusive",
            "comparison set too small: 900 rows < 1000",
        ),
        (
            "too few positives",
            _m(pr_auc=0.6),
            CHAMPION,
            5000,
            10,
            "inconclusive",
            "too few positives: 10 < 20; a fair comparison becomes possible as of 2026-03-01",
        ),
        (
            "no champion, too-small holdout",
            _m(),
            None,
            900,
            60,
            "reject",
            "holdout too small: 900 rows < 1000",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_truth_table(case, challenger, champion, rows, positives, outcome, reason) -> None:
    evidence = Evidence(
        challenger=challenger,
        champion=champion,
        rows=rows,
        positives=positives,
        champion_version=None if champion is None else "1",
        fair_from="2026-03-01",
    )
    decision = decide(POLICY, evidence)
    assert decision.outcome == outcome, case
    assert decision.promote is (outcome == "promote")
    assert any(reason in r for r in decision.reasons), decision.reasons


# A collapsed champion (concept drift): it fails both floors on the comparison rows.
FAILING = _m(pr_auc=0.02, roc_auc=0.55)


@pytest.mark.parametrize(
    ("case", "challenger", "strict", "outcome", "reason"),
    [
        (
            "below the floors, better than a champion failing them",
            _m(pr_auc=0.19, roc_auc=0.79),
            False,
            "promote",
            "pr_auc 0.1900 fails floor 0.3, but the champion fails it too on the same rows "
            "(0.0200) and does worse",
        ),
        (
            "the same with strict floors",
            _m(pr_auc=0.19, roc_auc=0.79),
            True,
            "reject",
            "pr_auc 0.1900 fails floor 0.3",
        ),
        (
            "below the floors, no better than the failing champion",
            _m(pr_auc=0.021, roc_auc=0.54),
            False,
            "reject",
            "roc_auc 0.5400 fails floor 0.8",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_a_floor_the_champion_fails_too(case, challenger, strict, outcome, reason) -> None:
    evidence = Evidence(
        challenger=challenger,
        champion=FAILING,
        rows=5000,
        positives=60,
        champion_version="1",
        interval=Interval(
            metric="pr_auc",
            gain=challenger["pr_auc"] - 0.02,
            low=challenger["pr_auc"] - 0.03,
            high=challenger["pr_auc"],
            level=0.9,
            resamples=200,
        ),
    )
    decision = decide(POLICY.model_copy(update={"strict_floors": strict}), evidence)
    assert decision.outcome == outcome, decision.reasons
    assert any(r.startswith(reason) for r in decision.reasons), decision.reasons


def test_rejection_lists_every_failed_rule() -> None:
    evidence = Evidence(
        challenger=_m(pr_auc=0.2, roc_auc=0.7, log_loss=0.2),
        champion=CHAMPION,
        rows=5000,
        positives=60,
        champion_version="1",
    )
    decision = decide(POLICY, evidence)
    assert decision.outcome == "reject"
    # pr_auc floor, roc_auc floor, pr_auc gain, roc_auc and log_loss guards
    assert len(decision.reasons) == 5, decision.reasons


def test_champion_moved_mid_run_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    assert monitoring.compare_and_set_champion(
        model="m", expected=None, new="1", actor="run-a", url=url
    )
    # run B evaluated against champion 1 and promotes 2 ...
    assert monitoring.compare_and_set_champion(
        model="m", expected="1", new="2", actor="run-b", url=url
    )
    # ... run C also evaluated against champion 1: refused, champion stays 2
    assert not monitoring.compare_and_set_champion(
        model="m", expected="1", new="3", actor="run-c", url=url
    )
    state = monitoring.read_state("m", url)
    assert (state.champion_version, state.generation) == ("2", 2)


def test_racing_promoters_exactly_one_wins(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    monitoring.compare_and_set_champion(model="m", expected=None, new="1", actor="seed", url=url)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def contender(version: str) -> None:
        barrier.wait()
        results.append(
            monitoring.compare_and_set_champion(
                model="m", expected="1", new=version, actor=version, url=url
            )
        )

    threads = [threading.Thread(target=contender, args=(str(v),)) for v in range(2, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_interval_lower_bound_decides_not_the_point_estimate() -> None:
    wide = Interval(metric="pr_auc", gain=0.05, low=-0.01, high=0.11, level=0.9, resamples=200)
    evidence = Evidence(
        challenger=_m(pr_auc=0.55),
        champion=CHAMPION,
        rows=5000,
        positives=60,
        champion_version="1",
        interval=wide,
        comparison_window=("2026-02-01T00:00:00+00:00", "2026-02-05T00:00:00+00:00"),
    )
    decision = decide(POLICY, evidence)
    assert decision.outcome == "reject"
    assert any(
        "90% interval [-0.0100, +0.1100] over 200 paired resamples" in r
        and "lower bound -0.0100 is less than the required 0.01" in r
        and "[2026-02-01T00:00:00+00:00, 2026-02-05T00:00:00+00:00)" in r
        for r in decision.reasons
    ), decision.reasons
    narrow = Interval(metric="pr_auc", gain=0.05, low=0.02, high=0.08, level=0.9, resamples=200)
    assert decide(POLICY, replace(evidence, interval=narrow)).outcome == "promote"


def test_a_regressing_slice_is_rejected_by_name() -> None:
    slices = (
        SliceEvidence("channel", "chip", 2000, 30, _m(), _m()),
        SliceEvidence("channel", "online", 2000, 25, _m(roc_auc=0.85), _m()),
        SliceEvidence("channel", "contactless", 900, 5),
    )
    evidence = Evidence(
        challenger=_m(pr_auc=0.6),
        champion=CHAMPION,
        rows=5000,
        positives=60,
        champion_version="1",
        slices=slices,
    )
    decision = decide(POLICY, evidence)
    assert decision.outcome == "reject"
    assert decision.reasons == [
        "roc_auc in slice channel=online regresses by 0.0500 (0.9000 -> 0.8500), "
        "more than the allowed 0.01"
    ]
    healed = replace(evidence, slices=(slices[0], slices[2]))
    decision = decide(POLICY, healed)
    assert decision.outcome == "promote"
    assert any(
        "slice channel=contactless not judged: 900 rows, 5 positives" in r for r in decision.reasons
    )


def _world(seed: int, rows: int, gain: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two models' scores; the challenger's signal is stronger by ``gain``."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.03).astype(int)

    def scores(signal: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(signal * labels + rng.normal(0, 1, rows) - 3.5)))

    return labels, scores(2.0 + gain), scores(2.0)


def _promotes(policy: PromotionSpec, seed: int, gain: float, with_interval: bool) -> bool:
    from driftline.training import metrics

    labels, challenger, champion = _world(seed, 4000, gain)
    interval = paired_interval(
        "pr_auc",
        labels,
        challenger,
        champion,
        level=policy.confidence,
        resamples=policy.bootstrap_resamples,
        seed=0,
    )
    evidence = Evidence(
        challenger=metrics(labels, challenger, 0.01),
        champion=metrics(labels, champion, 0.01),
        rows=len(labels),
        positives=int(labels.sum()),
        champion_version="1",
        interval=interval if with_interval else None,
    )
    return decide(policy, evidence).promote


# the interval alone decides: no floors, no guards
BARE = POLICY.model_copy(
    update={"floors": {}, "max_regression": {}, "min_improvement": 0.005, "min_holdout_rows": 100}
)
SEEDS = range(30)


def test_no_real_improvement_is_promoted_at_most_one_time_in_ten() -> None:
    promoted = sum(_promotes(BARE, seed, 0.0, with_interval=True) for seed in SEEDS)
    assert promoted <= 0.1 * len(SEEDS), promoted
    # the point estimate alone would promote noise far more often: the interval is what holds
    by_point = sum(_promotes(BARE, seed, 0.0, with_interval=False) for seed in SEEDS)
    assert by_point >= 0.25 * len(SEEDS), by_point


def test_a_real_improvement_is_promoted_at_least_nine_times_in_ten() -> None:
    promoted = sum(_promotes(BARE, seed, 1.0, with_interval=True) for seed in SEEDS)
    assert promoted >= 0.9 * len(SEEDS), promoted


@pytest.mark.parametrize("metric", ["pr_auc", "roc_auc", "log_loss", "brier", "recall_at_fpr"])
def test_interval_point_equals_scikit_learn_metrics(metric: str) -> None:
    from driftline.training import metrics

    labels, challenger, champion = _world(3, 3000, 0.5)
    # ties, as a shallow booster produces them
    challenger, champion = np.round(challenger, 3), np.round(champion, 3)
    interval = paired_interval(
        metric, labels, challenger, champion, level=0.9, resamples=100, seed=0
    )
    expected = metrics(labels, challenger, 0.01)[metric] - metrics(labels, champion, 0.01)[metric]
    sign = 1 if metric in ("pr_auc", "roc_auc", "recall_at_fpr") else -1
    assert interval.gain == pytest.approx(sign * expected, abs=1e-9)
    assert interval.low <= interval.gain <= interval.high


def test_bootstrap_is_seeded_and_fast_at_the_demo_holdout_size() -> None:
    labels, challenger, champion = _world(5, 11_206, 0.3)
    started = time.perf_counter()
    first = paired_interval(
        "pr_auc", labels, challenger, champion, level=0.9, resamples=1000, seed=0
    )
    elapsed = time.perf_counter() - started
    again = paired_interval(
        "pr_auc", labels, challenger, champion, level=0.9, resamples=1000, seed=0
    )
    assert first == again
    # measured about 1 s on the 2-core machine; generous under a shared CPU
    assert elapsed < 15, elapsed


@pytest.mark.parametrize(
    ("seed", "rows", "rate", "decimals"),
    [(0, 3000, 0.03, 3), (1, 40, 0.05, 2), (2, 20_000, 0.01, None), (3, 5000, 0.5, 2)],
)
def test_pr_auc_resampling_equals_the_dense_weights_bit_for_bit(
    seed: int, rows: int, rate: float, decimals: int | None
) -> None:
    """The bootstrap's PR-AUC shortcut gives exactly what the weighted ranking metric gives
    under the same resamples: ties, resamples without a positive (NaN) and all."""
    from driftline.policy import _PrCurve, _weighted

    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < rate).astype(float)
    labels[0] = 1.0
    scores = rng.random(rows) * 0.5 + labels * rng.random(rows) * 0.5
    if decimals is not None:
        scores = np.round(scores, decimals)
    picks = rng.integers(0, rows, size=(64, rows))
    offsets = (np.arange(64) * rows)[:, None]
    weights = np.bincount((picks + offsets).ravel(), minlength=64 * rows)
    dense = _weighted("pr_auc", labels, scores, weights.reshape(64, rows).astype(float), 0.01)
    fast = _PrCurve(labels, scores).resampled(picks)
    np.testing.assert_array_equal(fast, dense)  # NaN where NaN, otherwise identical
    if rows < 100:
        assert np.isnan(dense).any()  # the small case does draw resamples without a positive


def test_pr_auc_interval_is_the_dense_weights_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from driftline import policy

    labels, challenger, champion = _world(7, 20_000, 0.3)
    challenger, champion = np.round(challenger, 4), np.round(champion, 4)
    fast = paired_interval("pr_auc", labels, challenger, champion, level=0.9, resamples=200, seed=3)
    monkeypatch.setattr(policy, "_binary", lambda labels: False)  # the general path
    dense = paired_interval(
        "pr_auc", labels, challenger, champion, level=0.9, resamples=200, seed=3
    )
    assert fast == dense
