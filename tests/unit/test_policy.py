"""The promotion policy as a truth table, and the compare-and-set it relies on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from driftline import monitoring
from driftline.policy import decide
from driftline.specs import PromotionSpec

POLICY = PromotionSpec(
    primary_metric="pr_auc",
    min_improvement=0.01,
    floors={"pr_auc": 0.3, "roc_auc": 0.8},
    max_regression={"roc_auc": 0.01, "log_loss": 0.005},
    min_holdout_rows=1000,
    min_holdout_positives=20,
)
CHAMPION = {"pr_auc": 0.50, "roc_auc": 0.90, "log_loss": 0.050, "brier": 0.01, "recall_at_fpr": 0.5}


def _m(**changes: float) -> dict[str, float]:
    return {**CHAMPION, **changes}


@pytest.mark.parametrize(
    ("case", "challenger", "champion", "rows", "positives", "promote", "reason"),
    [
        ("no champion, above floors", _m(), None, 5000, 60, True, "no champion yet"),
        (
            "no champion, below a floor",
            _m(pr_auc=0.2),
            None,
            5000,
            60,
            False,
            "pr_auc 0.2000 fails floor 0.3",
        ),
        ("better", _m(pr_auc=0.55), CHAMPION, 5000, 60, True, "pr_auc improves by +0.0500"),
        (
            "marginally better",
            _m(pr_auc=0.505),
            CHAMPION,
            5000,
            60,
            False,
            "less than the required 0.01",
        ),
        ("equal", _m(), CHAMPION, 5000, 60, False, "improves by +0.0000"),
        ("worse", _m(pr_auc=0.45), CHAMPION, 5000, 60, False, "improves by -0.0500"),
        (
            "guard metric regresses",
            _m(pr_auc=0.6, roc_auc=0.88),
            CHAMPION,
            5000,
            60,
            False,
            "roc_auc regresses by 0.0200",
        ),
        (
            "lower-is-better guard regresses",
            _m(pr_auc=0.6, log_loss=0.06),
            CHAMPION,
            5000,
            60,
            False,
            "log_loss regresses by 0.0100",
        ),
        (
            "guard within tolerance",
            _m(pr_auc=0.6, roc_auc=0.895),
            CHAMPION,
            5000,
            60,
            True,
            "roc_auc within tolerance",
        ),
        (
            "too-small holdout",
            _m(pr_auc=0.6),
            CHAMPION,
            900,
            60,
            False,
            "holdout too small: 900 rows < 1000",
        ),
        (
            "too few positives",
            _m(pr_auc=0.6),
            CHAMPION,
            5000,
            10,
            False,
            "too few positives: 10 < 20",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_truth_table(case, challenger, champion, rows, positives, promote, reason) -> None:
    decision = decide(
        POLICY,
        challenger=challenger,
        champion=champion,
        holdout_rows=rows,
        holdout_positives=positives,
    )
    assert decision.promote is promote, case
    assert any(reason in r for r in decision.reasons), decision.reasons


def test_rejection_lists_every_failed_rule() -> None:
    decision = decide(
        POLICY,
        challenger=_m(pr_auc=0.2, roc_auc=0.7),
        champion=CHAMPION,
        holdout_rows=10,
        holdout_positives=1,
    )
    assert not decision.promote
    assert len(decision.reasons) >= 5


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
