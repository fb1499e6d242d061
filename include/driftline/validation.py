"""The data-validation gate: a training set is trusted only after every check passes.

The rules come from the model spec's ``validation`` block. Every check records what it
observed and the threshold it held it to, so a failure names the check, the value and
where it came from. The result is a JSON report and a readable HTML page in the run's
directory; a failed gate stops the run before training.

The labeled training set gets every check; the ``recent`` rows (newer than the training
window, labels not matured yet) get the checks that need no label, so a broken newest
partition stops the run too.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftline.errors import DriftlineError
from driftline.files import write_atomic
from driftline.specs import ModelSpec
from driftline.training_set import Window

REPORT_JSON = "validation.json"
REPORT_HTML = "validation.html"


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    observed: Any
    threshold: str
    detail: str = ""
    # passed, but worth a look (recorded in the report, blocks nothing)
    warning: bool = False

    def describe(self) -> str:
        text = f"{self.name}: observed {_fmt(self.observed)}, threshold {self.threshold}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass
class ValidationReport:
    model: str
    window: dict[str, str]
    source: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.passed and check.warning]

    def summary(self) -> str:
        if self.passed:
            warned = "; ".join(check.describe() for check in self.warnings)
            return f"validation passed for {self.model}: {len(self.checks)} checks" + (
                f", {len(self.warnings)} warning(s): {warned}" if warned else ""
            )
        return (
            f"validation failed for {self.model} ({self.source}): "
            f"{len(self.failed)} of {len(self.checks)} checks failed: "
            + "; ".join(check.describe() for check in self.failed)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "window": self.window,
            "source": self.source,
            "passed": self.passed,
            "checks": [asdict(check) for check in self.checks],
        }

    def write(self, run_dir: Path) -> tuple[Path, Path]:
        run_dir.mkdir(parents=True, exist_ok=True)
        json_path, html_path = run_dir / REPORT_JSON, run_dir / REPORT_HTML
        write_atomic(json_path, json.dumps(self.as_dict(), indent=2, default=_jsonable))
        write_atomic(html_path, render_html(self))
        return json_path, html_path


class ValidationFailed(DriftlineError):
    """The gate refused the data; the message names every failed check."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report
        self.report_uri = ""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


class _Checks:
    """Collects checks for one frame under a scope prefix (``training`` or ``recent``)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.items: list[Check] = []

    def add(
        self,
        name: str,
        passed: bool,
        observed: Any,
        threshold: str,
        detail: str = "",
        warning: bool = False,
    ) -> None:
        self.items.append(
            Check(f"{self.scope}.{name}", bool(passed), observed, threshold, detail, warning)
        )


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _null_ceiling(spec: ModelSpec, column: str) -> float:
    ceilings = spec.validation.max_null_rate
    return ceilings.get(column, ceilings.get("default", 0.0))


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC by ranks, symmetric (a perfectly inverted feature leaks too)."""
    positives = float(labels.sum())
    negatives = float(len(labels)) - positives
    if positives == 0 or negatives == 0:
        return 0.5
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    auc = (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    return float(max(auc, 1.0 - auc))


# a day breaks a rate rule when its rate is beyond the threshold by more than chance explains
DAY_SIGNIFICANCE = 0.001


@dataclass(frozen=True)
class _Days:
    """The UTC calendar day of every row of a frame, factorized once: each per-day rule
    counts its hits with one bincount instead of grouping the whole frame again."""

    timestamps: pd.Series
    codes: np.ndarray  # index into ``dates``; -1 for a row without a timestamp
    dates: list[date]  # ascending
    rows: np.ndarray  # rows per day

    @classmethod
    def of(cls, column: pd.Series) -> _Days:
        timestamps = pd.to_datetime(column, utc=True)
        codes, days = pd.factorize(timestamps.dt.floor("D"), sort=True)
        return cls(
            timestamps=timestamps,
            codes=codes,
            dates=[day.date() for day in days],
            rows=np.bincount(codes[codes >= 0], minlength=len(days)),
        )

    def hits(self, hits: pd.Series) -> np.ndarray:
        """Rows per day where ``hits`` is true."""
        picked = self.codes[hits.to_numpy(dtype=bool) & (self.codes >= 0)]
        return np.bincount(picked, minlength=len(self.dates))


def _days_beyond(
    hits: pd.Series, days: _Days, *, low: float | None = None, high: float | None = None
) -> list[str]:
    """The days whose share of ``hits`` is outside ``[low, high]`` beyond binomial noise
    (one-sided p < DAY_SIGNIFICANCE), each as "day: rate (hits of rows)"."""
    broken = []
    for day, k, n in zip(days.dates, days.hits(hits), days.rows, strict=True):
        rate = k / n
        if not ((high is not None and rate > high) or (low is not None and rate < low)):
            continue  # within the bounds: no test needed (and scipy not imported)
        from scipy.stats import binom

        too_high = high is not None and rate > high and binom.sf(k - 1, n, high) < DAY_SIGNIFICANCE
        too_low = low is not None and rate < low and binom.cdf(k, n, low) < DAY_SIGNIFICANCE
        if too_high or too_low:
            broken.append(f"{day}: {rate:.4g} ({int(k)} of {int(n)})")
    return broken


def _day_check(checks: _Checks, name: str, broken: list[str], threshold: str) -> None:
    checks.add(
        f"{name}.per_day",
        not broken,
        broken[:10] or "every day within",
        f"every day {threshold} (one-sided binomial p >= {DAY_SIGNIFICANCE})",
        f"{len(broken)} day(s) out of bounds" if broken else "",
    )


def _frame_checks(
    checks: _Checks, spec: ModelSpec, frame: pd.DataFrame, window: Window, labeled: bool
) -> _Days | None:
    """Checks every frame gets. Returns the rows' days, or None when columns are missing
    (later checks skip)."""
    required = [*spec.entity_keys, spec.timestamp_column, *spec.feature_names]
    if labeled:
        required.append(spec.label)
    missing = [column for column in required if column not in frame.columns]
    checks.add(
        "required_columns",
        not missing,
        f"missing {missing}" if missing else "all present",
        f"{len(required)} columns of the spec",
    )
    if missing:
        return None

    wrong_types = []
    categorical = spec.categorical
    for name in spec.feature_names:
        series = frame[name]
        if name in categorical:
            ok = (
                pd.api.types.is_object_dtype(series)
                or isinstance(series.dtype, pd.CategoricalDtype)
                or pd.api.types.is_string_dtype(series)
            )
        else:
            ok = _is_numeric(series)
        if not ok:
            wrong_types.append(f"{name}: {series.dtype}")
    checks.add(
        "dtypes",
        not wrong_types,
        wrong_types or "as declared",
        "numeric features numeric, categorical features strings",
    )

    days = _Days.of(frame[spec.timestamp_column])
    for name in spec.feature_names:
        series = frame[name]
        rate = float(series.isna().mean()) if len(series) else 0.0
        ceiling = _null_ceiling(spec, name)
        detail = "every value is null" if len(series) and rate == 1.0 else ""
        checks.add(f"null_rate[{name}]", rate <= ceiling, rate, f"<= {ceiling}", detail)
        # one broken day cannot hide in a window of good ones
        broken = _days_beyond(series.isna(), days, high=ceiling) if len(series) else []
        _day_check(checks, f"null_rate[{name}]", broken, f"<= {ceiling}")

    for name in spec.feature_names:
        if name in categorical or not _is_numeric(frame[name]):
            continue
        infinite = int(np.isinf(frame[name].to_numpy(dtype=float, na_value=np.nan)).sum())
        checks.add(f"finite[{name}]", infinite == 0, infinite, "0 infinite values")

    for name, allowed in categorical.items():
        if not (
            pd.api.types.is_object_dtype(frame[name]) or pd.api.types.is_string_dtype(frame[name])
        ):
            continue
        unknown = sorted(set(frame[name].dropna().astype(str)) - set(allowed))
        checks.add(
            f"categories[{name}]",
            not unknown,
            unknown[:10] or "all declared",
            f"one of the {len(allowed)} declared categories",
        )

    for name, shares in spec.validation.category_shares.items():
        values = frame[name].astype("string")
        for category, (low, high) in sorted(shares.items()):
            hits = (values == category).fillna(False)
            share = float(hits.mean()) if len(hits) else 0.0
            bounds = f"within [{low}, {high}]"
            rule = f"category_share[{name}={category}]"
            checks.add(rule, low <= share <= high, share, f"share of rows {bounds}")
            broken = _days_beyond(hits, days, low=low, high=high) if len(hits) else []
            _day_check(checks, rule, broken, bounds)

    for name, (low, high) in spec.validation.ranges.items():
        if name not in frame.columns or not _is_numeric(frame[name]):
            continue
        values = frame[name].to_numpy(dtype=float, na_value=np.nan)
        outside = int(((values < low) | (values > high)).sum())
        checks.add(
            f"range[{name}]",
            outside == 0,
            outside,
            f"0 values outside [{low}, {high}]",
            f"observed min {np.nanmin(values):.4g}, max {np.nanmax(values):.4g}" if outside else "",
        )

    keys = [*spec.entity_keys, spec.timestamp_column]
    duplicates = int(frame.duplicated(subset=keys).sum())
    checks.add(
        "duplicate_keys",
        duplicates <= spec.validation.max_duplicate_keys,
        duplicates,
        f"<= {spec.validation.max_duplicate_keys} duplicate ({', '.join(keys)}) rows",
    )

    timestamps = days.timestamps
    future = int((timestamps > pd.Timestamp(window.as_of)).sum())
    checks.add(
        "no_future_timestamps",
        future == 0,
        future,
        f"0 rows after the as-of time {window.as_of.isoformat()}",
        f"newest {timestamps.max().isoformat()}" if future else "",
    )

    view_features: dict[str, list[str]] = {}
    for ref in spec.feast_features:
        view, feature = ref.split(":")
        view_features.setdefault(view, []).append(feature)
    for view, features in view_features.items():
        stale = float(frame[features].isna().all(axis=1).mean()) if len(frame) else 0.0
        checks.add(
            f"freshness[{view}]",
            stale <= spec.validation.max_stale_rate,
            stale,
            f"<= {spec.validation.max_stale_rate} of rows without any {view} value within its TTL",
        )
    return days


def _labeled_checks(
    checks: _Checks, spec: ModelSpec, frame: pd.DataFrame, window: Window, days: _Days
) -> None:
    rules = spec.validation
    checks.add("row_count", len(frame) >= rules.min_rows, len(frame), f">= {rules.min_rows}")

    label = frame[spec.label]
    label_nulls = int(label.isna().sum())
    values = set(label.dropna().unique().tolist())
    binary = values <= {0, 1}
    checks.add(
        "label_present",
        label_nulls == 0 and binary and len(frame) > 0,
        f"{label_nulls} nulls, values {sorted(values)[:5]}",
        "no nulls, values in {0, 1}",
    )
    positives = int(label.fillna(0).sum()) if binary else 0
    rate = positives / len(frame) if len(frame) else 0.0
    low, high = rules.label_rate
    checks.add("label_rate", low <= rate <= high, rate, f"in [{low}, {high}]")
    if binary and len(frame):
        broken = _days_beyond(label.fillna(0) == 1, days, low=low, high=high)
        _day_check(checks, "label_rate", broken, f"in [{low}, {high}]")
    checks.add(
        "positives", positives >= rules.min_positives, positives, f">= {rules.min_positives}"
    )

    window_days = pd.date_range(window.start, window.end, freq="D", inclusive="left").date
    present = set(days.dates)
    coverage = sum(day in present for day in window_days) / max(len(window_days), 1)
    checks.add(
        "window_coverage",
        coverage >= rules.min_day_coverage,
        coverage,
        f">= {rules.min_day_coverage} of the days in [{window.start.date()}, {window.end.date()})",
    )

    if positives == 0 or not binary or label_nulls:
        return
    leaks = []
    labels = label.to_numpy(dtype=int)
    for name in spec.feature_names:
        series = frame[name]
        if name in spec.categorical:
            scores = series.map(frame.groupby(name, observed=True)[spec.label].mean())
        else:
            scores = series
        scores = scores.to_numpy(dtype=float, na_value=np.nan)
        known = ~np.isnan(scores)
        if known.sum() < 10:
            continue
        auc = _auc(scores[known], labels[known])
        if auc > rules.leakage_max_auc:
            leaks.append(f"{name} (AUC {auc:.4f})")
    checks.add(
        "leakage",
        not leaks,
        leaks or "none",
        f"no single feature predicts the label with AUC > {rules.leakage_max_auc}",
    )


def validate(
    spec: ModelSpec,
    training: pd.DataFrame,
    recent: pd.DataFrame,
    window: Window,
    *,
    source: str,
    schema_changes: list[str] | tuple[str, ...] = (),
) -> ValidationReport:
    """Run every check; never raises for bad data (see :func:`enforce`).

    ``schema_changes`` are the columns the training-set build found added to the entity and
    feature partitions it read (and read past): a warning with ``validation.on_new_columns: warn``."""
    report = ValidationReport(model=spec.name, window=window.as_dict(), source=source)
    training_checks = _Checks("training")
    policy = spec.validation.on_new_columns
    training_checks.add(
        "schema_evolution",
        not schema_changes or policy == "warn",
        list(schema_changes) or "no new columns",
        f"on_new_columns: {policy} (a missing or retyped column always blocks)",
        "new columns are ignored by training" if schema_changes else "",
        warning=bool(schema_changes),
    )
    days = _frame_checks(training_checks, spec, training, window, labeled=True)
    if days is not None:
        _labeled_checks(training_checks, spec, training, window, days)
    else:
        training_checks.add(
            "row_count",
            len(training) >= spec.validation.min_rows,
            len(training),
            f">= {spec.validation.min_rows}",
        )
    report.checks.extend(training_checks.items)
    if len(recent):
        recent_checks = _Checks("recent")
        _frame_checks(recent_checks, spec, recent, window, labeled=False)
        report.checks.extend(recent_checks.items)
    return report


def enforce(report: ValidationReport) -> None:
    """Raise :class:`ValidationFailed`, naming every failed check, unless all passed."""
    if not report.passed:
        raise ValidationFailed(report)


def render_html(report: ValidationReport) -> str:
    rows = []
    for check in report.checks:
        status = ("warn" if check.warning else "pass") if check.passed else "FAIL"
        rows.append(
            f"<tr class='{status.lower()}'><td>{status}</td><td>{html.escape(check.name)}</td>"
            f"<td>{html.escape(_fmt(check.observed))}</td><td>{html.escape(check.threshold)}</td>"
            f"<td>{html.escape(check.detail)}</td></tr>"
        )
    verdict = "passed" if report.passed else f"FAILED ({len(report.failed)} checks)"
    window = ", ".join(f"{k} {v}" for k, v in report.window.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Validation: {html.escape(report.model)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
tr.fail td {{ background: #fde2e2; }}
tr.warn td {{ background: #fff4ce; }}
tr.pass td:first-child {{ color: #1a7f37; }}
</style></head><body>
<h1>Data validation: {html.escape(report.model)} — {verdict}</h1>
<p>Source: {html.escape(report.source)}<br>Window: {html.escape(window)}</p>
<table><tr><th>status</th><th>check</th><th>observed</th><th>threshold</th><th>detail</th></tr>
{"".join(rows)}
</table></body></html>
"""
