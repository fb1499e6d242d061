"""`driftline simulate` without a stack: timelines, bad input, the calendar, the summary."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from driftline.clock import resolve_as_of
from driftline.errors import InvalidInput
from driftline.settings import REPO_ROOT
from driftline.simulate import (
    compare,
    first_simulated_day,
    load_timeline,
    summarize,
    weekly_due,
)
from driftline.simulate_report import write_report

SIMULATIONS = REPO_ROOT / "simulations"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=dict(os.environ),
    )


@pytest.mark.parametrize("name", ["concept_drift", "holiday_covariate_shift"])
def test_shipped_timelines_load_and_drift_after_a_baseline(name: str) -> None:
    timeline = load_timeline(SIMULATIONS / f"{name}.yaml")
    assert timeline.name == name
    scenarios = timeline.scenarios()
    assert scenarios[0] == "baseline"
    assert len(set(scenarios)) > 1
    assert timeline.days >= 28


MALFORMED = {
    "unknown scenario": (
        "name: t\nsegments:\n  - {scenario: blizzard, days: 3}\n",
        "segments.0.scenario: unknown scenario 'blizzard'; known: baseline, covariate_shift, concept_drift",
    ),
    "zero days": (
        "name: t\nsegments:\n  - {scenario: baseline, days: 0}\n",
        "segments.0.days: Input should be greater than 0",
    ),
    "no segments": ("name: t\nsegments: []\n", "segments: List should have at least 1 item"),
    "missing segments": ("name: t\n", "segments: Field required"),
    "unknown key": (
        "name: t\nsegmnts: []\nsegments:\n  - {scenario: baseline, days: 1}\n",
        "segmnts: Extra inputs are not permitted",
    ),
    "not a mapping": ("- baseline\n", "expected a mapping with name and segments, got list"),
    "not YAML": ("name: [unclosed\n", "is not readable YAML"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_timeline_is_one_line_naming_the_field(case: str, tmp_path: Path) -> None:
    text, expected = MALFORMED[case]
    path = tmp_path / "timeline.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput) as raised:
        load_timeline(path)
    assert expected in str(raised.value)
    assert str(path) in str(raised.value)


def test_cli_unknown_timeline_file_exits_2_and_writes_nothing(
    driftline_home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = _cli("--scenario", "simulations/nope.yaml", "--out", str(out), cwd=REPO_ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "driftline: error: timeline simulations/nope.yaml does not exist "
        "(--scenario takes a timeline file)"
    ]
    assert not out.exists()


def test_cli_malformed_timeline_exits_2(driftline_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsegments:\n  - {scenario: concept_drift, days: -2}\n")
    result = _cli("--scenario", str(path), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "segments.0.days: Input should be greater than 0" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_without_a_running_stack_exits_3_and_writes_nothing(
    driftline_home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = _cli(
        "--scenario", str(SIMULATIONS / "concept_drift.yaml"), "--out", str(out), cwd=tmp_path
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"driftline: error: no running stack for {driftline_home}; start it with `make up` "
        "(or pass --spec to let simulate start its own)"
    ]
    assert not out.exists()
    assert not (driftline_home / "offline").exists()  # not a day was generated


def test_cli_bad_spec_is_refused_before_anything_starts(
    driftline_home: Path, tmp_path: Path
) -> None:
    timeline = str(SIMULATIONS / "concept_drift.yaml")
    result = _cli("--scenario", timeline, "--spec", str(tmp_path / "a.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"driftline: error: --spec {tmp_path / 'a.yaml'} does not exist"

    spec = (REPO_ROOT / "include" / "models" / "fraud_detection.yaml").read_text()
    broken = tmp_path / "b.yaml"
    broken.write_text(spec.replace("min_improvement: 0.005", "min_improvement: lots"))
    result = _cli("--scenario", timeline, "--spec", str(broken), cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"model spec {broken} is malformed: promotion.min_improvement" in result.stderr
    assert not (driftline_home / "run").exists()  # no stack was started

    result = _cli("--scenario", timeline, *(["--spec", str(broken)] * 3), cwd=tmp_path)
    assert result.returncode == 2
    assert "--spec given 3 times; compare one or two specs" in result.stderr


def test_a_drift_started_retrain_takes_its_synthetic_day_as_of_on_every_day() -> None:
    """A drift-started retrain has no end_date: its as-of comes from its wall-clock run time,
    capped at the newest day present. In a stack simulate starts, that is always the
    synthetic day's end, never the wall clock's today."""
    timeline = load_timeline(REPO_ROOT / "simulations" / "concept_drift.yaml")
    now = datetime(2026, 11, 26, 16, 30, tzinfo=UTC)
    first = first_simulated_day(timeline, now.date())
    for offset in range(timeline.days):
        day = first + timedelta(days=offset)
        synthetic_as_of = datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)
        assert resolve_as_of(end_date=None, reference=now, newest_day=day) == synthetic_as_of


def test_the_weekly_retrain_falls_due_on_the_synthetic_monday() -> None:
    cron = "0 3 * * 1"  # Monday 03:00 UTC
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    assert weekly_due(cron, monday)
    due = [d for d in range(7) if weekly_due(cron, datetime(2026, 11, 20 + d, tzinfo=UTC))]
    assert due == [3]  # 2026-11-23 only


def _day(index: int, scenario: str, quality: dict[str, float] | None, **extra: Any) -> dict:
    return {
        "day": f"2026-03-{index + 1:02d}",
        "scenario": scenario,
        "champion_serving": extra.get("serving", "1"),
        "drift": {"verdict": extra.get("verdict", "ok")},
        "monitor": "success",
        "retrains": extra.get("retrains", []),
        "quality": quality,
    }


def _q(driftline: float, first: float, oracle: float) -> dict[str, float]:
    return {"driftline": driftline, "first_champion": first, "oracle": oracle}


def test_summary_counts_decisions_and_measures_detection_and_recovery() -> None:
    promoted = [{"trigger": "weekly", "outcome": "promoted", "reasons": []}]
    rejected = [{"trigger": "drift", "outcome": "rejected", "reasons": []}]
    days = [
        _day(0, "baseline", _q(0.7, 0.7, 0.7)),
        _day(1, "baseline", _q(0.7, 0.7, 0.72)),
        _day(2, "concept_drift", _q(0.05, 0.05, 0.06)),
        _day(3, "concept_drift", _q(0.05, 0.05, 0.3), verdict="drift", retrains=rejected),
        _day(4, "concept_drift", _q(0.05, 0.05, 0.5), retrains=promoted),
        _day(5, "concept_drift", _q(0.55, 0.05, 0.56), serving="2"),
        _day(6, "concept_drift", _q(0.6, 0.05, 0.6), serving="2"),
        _day(7, "concept_drift", None),  # labels not matured yet
    ]
    summary = summarize(days)
    assert summary["drift_onset"] == "2026-03-03"
    assert summary["days_to_detect"] == 1
    assert summary["days_to_recover"] == 3
    assert (summary["retrains"], summary["promotions"], summary["rejections"]) == (2, 1, 1)
    assert summary["matured_days"] == 7
    assert summary["post_drift_mean_pr_auc"] == {
        "driftline": 0.26,
        "first_champion": 0.05,
        "oracle": 0.404,
    }


def test_an_inconclusive_decision_counts_as_a_retrain_but_not_a_rejection() -> None:
    inconclusive = [{"trigger": "drift", "outcome": "inconclusive", "reasons": []}]
    skipped = [{"trigger": "drift", "outcome": "skipped", "reasons": []}]
    days = [
        _day(0, "baseline", _q(0.7, 0.7, 0.7)),
        _day(1, "concept_drift", _q(0.05, 0.05, 0.3), verdict="drift", retrains=inconclusive),
        _day(2, "concept_drift", _q(0.05, 0.05, 0.3), verdict="drift", retrains=skipped),
    ]
    summary = summarize(days)
    assert (summary["retrains"], summary["rejections"], summary["inconclusive"]) == (1, 0, 1)
    assert summary["skipped_by_cooldown"] == 1


def test_recovery_is_zero_without_degradation_and_named_when_it_never_comes() -> None:
    steady = [
        _day(0, "baseline", _q(0.7, 0.7, 0.7)),
        _day(1, "covariate_shift", _q(0.69, 0.69, 0.7)),
    ]
    assert summarize(steady)["days_to_recover"] == 0
    stuck = [_day(0, "baseline", _q(0.7, 0.7, 0.7)), _day(1, "concept_drift", _q(0.05, 0.05, 0.5))]
    assert summarize(stuck)["days_to_recover"] == "not within the timeline"


def test_report_has_the_plot_and_every_day(tmp_path: Path) -> None:
    days = [
        _day(0, "baseline", _q(0.7, 0.7, 0.7)),
        _day(
            1,
            "concept_drift",
            _q(0.1, 0.1, 0.2),
            verdict="drift",
            retrains=[
                {
                    "trigger": "drift",
                    "outcome": "promoted",
                    "challenger_version": "2",
                    "reasons": ["better"],
                }
            ],
        ),
    ]
    result = {
        "timeline": {"name": "t", "description": "d"},
        "summary": summarize(days),
        "days": days,
    }
    written = write_report(result, tmp_path)
    assert sorted(p.name for p in written) == ["quality.svg", "report.html"]
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "2026-03-02" in page and "drift: promoted v2" in page
    assert not list(tmp_path.glob(".*.tmp"))


def test_two_specs_are_compared_second_minus_first() -> None:
    base = [_day(0, "baseline", _q(0.7, 0.7, 0.7))]
    slow = [*base, _day(1, "concept_drift", _q(0.05, 0.05, 0.5), verdict="drift")]
    fast = [
        *base,
        _day(
            1,
            "concept_drift",
            _q(0.5, 0.05, 0.5),
            verdict="drift",
            retrains=[{"trigger": "drift", "outcome": "promoted", "reasons": []}],
        ),
    ]
    shipped = {"training": {"window_days": 28, "seed": 7}, "promotion": {"floors": {"pr_auc": 0.2}}}
    proposed = {
        "training": {"window_days": 10, "seed": 7},
        "promotion": {"floors": {"pr_auc": 0.05}},
    }
    runs = [
        {"spec": "a.yaml", "summary": summarize(slow), "spec_values": shipped},
        {"spec": "b.yaml", "summary": summarize(fast), "spec_values": proposed},
    ]
    comparison = compare(runs)
    assert comparison["specs"] == ["a.yaml", "b.yaml"]
    assert comparison["spec_changes"] == {
        "promotion.floors.pr_auc": [0.2, 0.05],
        "training.window_days": [28, 10],
    }
    diff = comparison["second_minus_first"]
    assert (diff["retrains"], diff["promotions"], diff["rejections"]) == (1, 1, 0)
    assert diff["post_drift_mean_pr_auc_driftline"] == 0.45
    assert diff["post_drift_mean_pr_auc_gain_over_never_retrained"] == 0.45
    assert diff["days_to_detect"] == 0
    assert diff["days_to_recover"] == ["not within the timeline", 0]
    side = comparison["side_by_side"]
    assert side["promotions"] == [0, 1]
    assert side["post_drift_mean_pr_auc_driftline"] == [0.05, 0.5]


def test_the_comparison_report_shows_what_spec_b_changes_and_both_runs(tmp_path: Path) -> None:
    days = [_day(0, "baseline", _q(0.7, 0.7, 0.7)), _day(1, "concept_drift", _q(0.1, 0.1, 0.5))]
    runs = [
        {
            "spec": name,
            "timeline": {"name": "t"},
            "summary": summarize(days),
            "days": days,
            "spec_values": {"drift": {"cooldown_hours": hours}},
        }
        for name, hours in (("a.yaml", 24), ("b.yaml", 0))
    ]
    result = {"timeline": {"name": "t"}, "runs": runs, "comparison": compare(runs)}
    written = write_report(result, tmp_path)
    assert sorted(p.name for p in written) == ["quality_1.svg", "quality_2.svg", "report.html"]
    page = (tmp_path / "report.html").read_text()
    assert "<tr><td>drift.cooldown_hours</td><td>24</td><td>0</td></tr>" in page
    assert "<tr><td>promotions</td><td>0</td><td>0</td><td>0</td></tr>" in page
    assert "spec a.yaml" in page and "spec b.yaml" in page


def test_a_timeline_that_would_reach_today_is_refused(driftline_home: Path, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from driftline.datagen import generate
    from driftline.settings import get_settings
    from driftline.simulate import check_calendar

    today = datetime.now(UTC).date()
    generate(offline_dir=get_settings().offline_dir, days=2, today=today - timedelta(days=9))
    newest = today - timedelta(days=10)
    fits = tmp_path / "fits.yaml"
    fits.write_text(
        "name: fits\nmodel: fraud_detection\nsegments: [{scenario: baseline, days: 9}]\n"
    )
    check_calendar(load_timeline(fits), get_settings())
    too_long = tmp_path / "too_long.yaml"
    too_long.write_text(
        "name: too_long\nmodel: fraud_detection\nsegments: [{scenario: baseline, days: 10}]\n"
    )
    with pytest.raises(InvalidInput) as refused:
        check_calendar(load_timeline(too_long), get_settings())
    message = str(refused.value)
    assert f"10 simulated days after the newest data ({newest}) would reach {today}" in message
    assert "must stay behind the wall clock" in message
