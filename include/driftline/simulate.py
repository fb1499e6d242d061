"""`driftline simulate`: a synthetic calendar driven through the real stack, and scored.

A timeline (``simulations/*.yaml``) is a list of segments, each some days of one data
scenario. For every day, in order, through the running stack's Airflow REST API:

1. the day's transactions are generated (``datagen.generate``, continuing the offline store);
2. ``feature_materialization`` loads the day (``start``/``end``);
3. ``<model>_drift_monitor`` checks the day (``as_of`` = the end of the day);
4. a retrain the drift asset starts is waited for (admitted or skipped by the cooldown);
5. the spec's weekly retrain is triggered when its cron falls due on the synthetic calendar
   (``end_date`` = the day it falls on) — time is compressed: nothing waits for a wall-clock
   cron, what is due is triggered.

Recorded per day: the champion that served the day (the ``champion`` alias before the day's
runs), the drift verdict, every retrain with its outcome and reasons (the monitoring store's
audit log). When the timeline ends, every day whose labels have matured (``label_delay_days``)
is scored three ways on the same feature rows (one Feast point-in-time join): the model
driftline served that day, the first champion never retrained, and an oracle retrained every
day in-process with the same training code (``training.time_split`` / ``training.fit`` on the
training window a retrain as of that morning would read; never registered).

``--spec A --spec B`` runs the same timeline once per spec, each in its own fresh embedded
stack (a temporary state directory, same world, same seed), and reports the differences.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from driftline.airflow_rest import AirflowRest, generated_world
from driftline.clock import newest_day
from driftline.errors import DriftlineError, InvalidInput, Unavailable
from driftline.settings import Settings, get_settings

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
REPORT_FILE = "report.html"
PLOT_FILE = "quality.svg"
# recovered: driftline within this share of the oracle on every later matured day
RECOVERY_TOLERANCE = 0.1
# a day is degraded when driftline falls this share below its own pre-drift mean
DEGRADATION = 0.1


# --- the timeline ----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Segment(_Strict):
    """``days`` consecutive days of one data scenario."""

    scenario: str
    days: Annotated[int, Field(gt=0, le=366)]

    @field_validator("scenario")
    @classmethod
    def _known(cls, value: str) -> str:
        from driftline.datagen import SCENARIOS

        if value not in SCENARIOS:
            raise ValueError(f"unknown scenario {value!r}; known: {', '.join(SCENARIOS)}")
        return value


class World(_Strict):
    """The synthetic population of a stack the simulation starts itself (``--spec``)."""

    n_cards: Annotated[int, Field(ge=10)] = 2000
    n_merchants: Annotated[int, Field(ge=10)] = 300
    seed: Annotated[int, Field(ge=0)] = 42
    history_days: Annotated[int, Field(ge=36, le=365)] = 60


class Timeline(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{1,62}$")]
    description: str = ""
    model: str = "fraud_detection"
    weekly_retrain: bool = True
    world: World = World()
    segments: Annotated[list[Segment], Field(min_length=1)]
    source: str = ""

    @property
    def days(self) -> int:
        return sum(s.days for s in self.segments)

    def scenarios(self) -> list[str]:
        return [s.scenario for s in self.segments for _ in range(s.days)]


def _format_error(source: Path, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return f"timeline {source} is malformed: " + "; ".join(problems)


def load_timeline(path: Path) -> Timeline:
    """Parse and validate a timeline file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"timeline {path} does not exist (--scenario takes a timeline file)")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(
            f"timeline {path} is not readable YAML: {exc}".replace("\n", " ")
        ) from None
    if not isinstance(raw, dict):
        raise InvalidInput(
            f"timeline {path} is malformed: expected a mapping with name and segments, "
            f"got {type(raw).__name__}"
        )
    try:
        return Timeline.model_validate({**raw, "source": str(path)})
    except ValidationError as exc:
        raise InvalidInput(_format_error(path, exc)) from None


def load_candidate_spec(path: Path, directory: Path) -> Any:
    """Validate a ``--spec`` file and place it in ``directory`` under its model's name."""
    from driftline.specs import load_spec_file

    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"--spec {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(
            f"--spec {path} is not readable YAML: {exc}".replace("\n", " ")
        ) from None
    name = raw.get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"--spec {path} is malformed: name: missing")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.yaml"
    shutil.copyfile(path, target)
    try:
        return load_spec_file(target)
    except DriftlineError as exc:
        raise InvalidInput(str(exc).replace(str(target), str(path))) from None


# --- driving the stack -------------------------------------------------------------------------


def weekly_due(cron: str, as_of: datetime) -> bool:
    """Does the weekly cron fall on the synthetic day that starts at ``as_of``?"""
    from croniter import croniter

    fire = croniter(cron, as_of - timedelta(microseconds=1)).get_next(datetime)
    return as_of <= fire < as_of + timedelta(days=1)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass
class Driver:
    """One timeline through one running stack."""

    stack: Any  # driftline.stack.Stack
    timeline: Timeline
    settings: Settings
    say: Callable[[str], None] = print
    timeout: float = 1200
    days: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rest = AirflowRest(self.stack, error=Unavailable, timeout=self.timeout)

    def _retrain_record(self, run_id: str, trigger: str, state: str) -> dict[str, Any]:
        from driftline import monitoring

        model = self.timeline.model
        decision = next(
            (
                a
                for a in monitoring.audit_log(model, limit=200, url=self.settings.monitoring_db_url)
                if a["run_id"] == run_id
            ),
            None,
        )
        tasks = self.rest.tasks(f"{model}_retrain", run_id)
        events = [
            {"id": e["id"], "status": e["status"], "reason": e["status_reason"]}
            for e in monitoring.drift_event_log(
                model, limit=50, url=self.settings.monitoring_db_url
            )
            if e["consumed_by_run_id"] == run_id
        ]
        if decision is not None:
            outcome = decision["action"]
        elif state == "failed":
            failed = sorted(t for t, s in tasks.items() if s == "failed")
            outcome = "failed"
            decision = {"reasons": [f"failed at {', '.join(failed) or 'an unknown task'}"]}
        elif tasks.get("admit_trigger") == "success" and tasks.get("build_training_set") in (
            "skipped",
            None,
        ):
            outcome = "skipped"
        else:
            outcome = "no decision"
        return {
            "run_id": run_id,
            "trigger": trigger,
            "state": state,
            "outcome": outcome,
            "challenger_version": (decision or {}).get("challenger_version"),
            "reasons": list((decision or {}).get("reasons") or []),
            "drift_events": events,
        }

    def run(self) -> list[dict[str, Any]]:
        from driftline import monitoring, registry
        from driftline.datagen import generate
        from driftline.specs import load_spec

        model = self.timeline.model
        spec = load_spec(model, self.settings.models_dir)
        rest = self.rest
        rest.token = rest.token or self.stack.token("admin")
        rest.api("GET", f"/api/v2/dags/{model}_retrain")  # the model's DAGs exist
        world = generated_world(self.settings.offline_dir)
        scenarios = self.timeline.scenarios()
        for index, scenario in enumerate(scenarios):
            serving = registry.alias_version(model, registry.CHAMPION, self.settings)
            if serving is None:
                raise InvalidInput(
                    f"{model} has no champion in {self.settings.home}; `make up` trains one"
                )
            began = time.monotonic()
            generated = generate(
                offline_dir=self.settings.offline_dir, scenario=scenario, days=1, **world
            )
            day = generated.days[0]
            as_of = _midnight(day) + timedelta(days=1)
            retrains_before = {r["dag_run_id"] for r in rest.runs(f"{model}_retrain")}
            # the drift monitor reads the offline store, not the online one: run both at once
            materialize = rest.trigger(
                "feature_materialization",
                {"start": day.isoformat(), "end": as_of.date().isoformat()},
            )
            monitor = rest.trigger(f"{model}_drift_monitor", {"as_of": as_of.date().isoformat()})
            materialized = rest.finished("feature_materialization", materialize)["state"]
            monitored = rest.finished(f"{model}_drift_monitor", monitor)["state"]
            report = next(
                (
                    r
                    for r in monitoring.drift_report_log(
                        model, limit=20, url=self.settings.monitoring_db_url
                    )
                    if r["run_id"] == monitor
                ),
                None,
            )
            announced = rest.tasks(f"{model}_drift_monitor", monitor).get("announce_drift")
            retrains = []
            if announced == "success":
                run = rest.new_run(
                    f"{model}_retrain",
                    retrains_before,
                    "asset_triggered",
                    what=f"the retrain the drift asset starts after {day}",
                    timeout=300,
                )
                state = rest.finished(f"{model}_retrain", run["dag_run_id"])["state"]
                retrains.append(self._retrain_record(run["dag_run_id"], "drift", state))
            if self.timeline.weekly_retrain and weekly_due(spec.schedule.retrain, as_of):
                run_id = rest.trigger(
                    f"{model}_retrain",
                    {
                        "end_date": as_of.date().isoformat(),
                        "reason": f"simulate {self.timeline.name}: weekly retrain due {as_of:%Y-%m-%d}",
                    },
                )
                state = rest.finished(f"{model}_retrain", run_id)["state"]
                retrains.append(self._retrain_record(run_id, "weekly", state))
            record = {
                "day": day.isoformat(),
                "wall_seconds": round(time.monotonic() - began, 1),
                "scenario": scenario,
                "rows": generated.rows,
                "frauds": generated.frauds,
                "champion_serving": serving,
                "champion_after": registry.alias_version(model, registry.CHAMPION, self.settings),
                "materialization": materialized,
                "monitor": monitored,
                "drift": (
                    {
                        "verdict": report["verdict"],
                        "share_drifted": report["share_drifted"],
                        "performance_decay": bool(report["performance"].get("decayed")),
                        "reasons": report["reasons"],
                        "report_id": report["id"],
                    }
                    if report
                    else None
                ),
                "retrains": retrains,
            }
            self.days.append(record)
            verdict = record["drift"]["verdict"] if report else f"monitor {monitored}"
            outcomes = ", ".join(f"{r['trigger']} {r['outcome']}" for r in retrains) or "-"
            self.say(
                f"[{index + 1}/{len(scenarios)}] {day} {scenario}: v{serving} served; "
                f"drift {verdict}; retrains {outcomes}; champion now v{record['champion_after']} "
                f"({record['wall_seconds']:.0f} s)"
            )
        return self.days


# --- scoring ------------------------------------------------------------------------------------


def score_days(
    model: str,
    days: list[dict[str, Any]],
    first_champion: str,
    settings: Settings,
    say: Callable[[str], None] = print,
) -> None:
    """Add ``quality`` to every record whose day's labels have matured (in place)."""
    import pandas as pd

    from driftline import registry
    from driftline.feature_store import get_store
    from driftline.specs import load_spec
    from driftline.training import fit, metrics, predict, time_split
    from driftline.training_set import Window, _join, entity_rows, training_window

    spec = load_spec(model, settings.models_dir)
    final_as_of = _midnight(date.fromisoformat(days[-1]["day"])) + timedelta(days=1)
    delay = timedelta(days=spec.label_delay_days)
    matured = [
        d
        for d in days
        if _midnight(date.fromisoformat(d["day"])) + timedelta(days=1) + delay <= final_as_of
    ]
    for record in days:
        record["quality"] = None
    if not matured:
        return
    first_day = _midnight(date.fromisoformat(matured[0]["day"]))
    last_end = _midnight(date.fromisoformat(matured[-1]["day"])) + timedelta(days=1)
    span = Window(start=training_window(spec, first_day).start, end=final_as_of, as_of=final_as_of)
    rows = entity_rows(spec, span, settings.offline_dir)
    ts_column, label = spec.timestamp_column, spec.label
    rows = rows[rows[ts_column] < last_end]
    say(f"scoring {len(matured)} matured days: one Feast join of {len(rows)} rows")
    # the same feature rows for all three models: one point-in-time join, sliced per day
    joined = _join(get_store(settings), spec, rows.reset_index(drop=True))
    stamps = pd.to_datetime(joined[ts_column], utc=True)
    available = pd.to_datetime(joined["label_available_at"], utc=True)
    boosters: dict[str, Any] = {}

    def booster(version: str) -> Any:
        if version not in boosters:
            boosters[version] = registry.load_booster(model, version, settings)
        return boosters[version]

    def pr_auc(model_booster: Any, frame: pd.DataFrame) -> float:
        scores = predict(model_booster, frame, spec)
        return metrics(frame[label].to_numpy(), scores, spec.training.target_fpr)["pr_auc"]

    for record in matured:
        start = _midnight(date.fromisoformat(record["day"]))
        today = joined[(stamps >= start) & (stamps < start + timedelta(days=1))]
        quality: dict[str, Any] = {"rows": len(today), "positives": int(today[label].sum())}
        try:
            quality["driftline"] = pr_auc(booster(record["champion_serving"]), today)
            quality["first_champion"] = pr_auc(booster(first_champion), today)
        except DriftlineError as exc:
            quality["note"] = str(exc)
            record["quality"] = quality
            continue
        # the oracle: retrained that morning on what a retrain as of then could read
        window = training_window(spec, start)
        labeled = joined[
            (stamps >= window.start) & (stamps < window.end) & (available <= window.as_of)
        ]
        try:
            oracle = fit(spec, time_split(labeled, spec, window))
            quality["oracle"] = pr_auc(oracle, today)
        except DriftlineError as exc:
            quality["oracle"] = None
            quality["note"] = f"oracle not trained: {exc}"
        record["quality"] = quality
        say(
            f"  {record['day']}: driftline {quality['driftline']:.3f}, never retrained "
            f"{quality['first_champion']:.3f}, oracle "
            + (f"{quality['oracle']:.3f}" if quality.get("oracle") is not None else "-")
        )


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def summarize(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Drift onset, detection, recovery, mean quality after the onset, decision counts."""
    scenarios = [d["scenario"] for d in days]
    onset = next((i for i, s in enumerate(scenarios) if s != scenarios[0]), None)
    scored = [
        (i, d["quality"])
        for i, d in enumerate(days)
        if d["quality"] and d["quality"].get("driftline") is not None
    ]
    retrains = [r for d in days for r in d["retrains"]]
    counts = {
        outcome: sum(1 for r in retrains if r["outcome"] == outcome)
        for outcome in ("promoted", "rejected", "inconclusive", "skipped", "failed")
    }
    summary: dict[str, Any] = {
        "days": len(days),
        "drift_onset": days[onset]["day"] if onset is not None else None,
        "drift_verdicts": sum(1 for d in days if (d["drift"] or {}).get("verdict") == "drift"),
        "retrain_runs": len(retrains),
        # trained and decided; inconclusive: no fair comparison yet, the champion stayed
        "retrains": counts["promoted"] + counts["rejected"] + counts["inconclusive"],
        "promotions": counts["promoted"],
        "rejections": counts["rejected"],
        "inconclusive": counts["inconclusive"],
        "skipped_by_cooldown": counts["skipped"],
        "failed_retrains": counts["failed"],
        "matured_days": len(scored),
    }
    pre = [q["driftline"] for i, q in scored if onset is None or i < onset]
    post = [(i, q) for i, q in scored if onset is not None and i >= onset]
    summary["pre_drift_mean_pr_auc"] = {"driftline": _mean(pre)}
    summary["post_drift_matured_days"] = len(post)
    summary["post_drift_mean_pr_auc"] = {
        name: _mean([q[name] for _, q in post if q.get(name) is not None])
        for name in ("driftline", "first_champion", "oracle")
    }
    if onset is None:
        summary.update(days_to_detect=None, days_to_recover=None)
        return summary
    detected = next(
        (
            i
            for i, d in enumerate(days)
            if i >= onset and (d["drift"] or {}).get("verdict") == "drift"
        ),
        None,
    )
    summary["days_to_detect"] = detected - onset if detected is not None else None
    summary["days_to_recover"] = _days_to_recover(post, pre, onset) if post else None
    return summary


def _days_to_recover(
    post: list[tuple[int, dict[str, Any]]], pre: list[float], onset: int
) -> int | str | None:
    """Days from the onset to the first matured day from which driftline, served by a model
    other than the never-retrained one, stays within RECOVERY_TOLERANCE of the oracle on
    every later matured day. 0 if driftline never degraded (DEGRADATION below its pre-drift
    mean); "not within the timeline" if it degraded and did not recover."""
    baseline = _mean(pre)
    degraded = [
        i for i, q in post if baseline is not None and q["driftline"] < (1 - DEGRADATION) * baseline
    ]
    if not degraded:
        return 0
    for position, (i, _) in enumerate(post):
        if i < degraded[0]:
            continue
        later = [q for _, q in post[position:]]
        if all(
            q.get("oracle") is not None
            and q["driftline"] >= (1 - RECOVERY_TOLERANCE) * q["oracle"]
            and q["driftline"] > q["first_champion"]
            for q in later
        ):
            return i - onset
    return "not within the timeline"


# --- entry points -------------------------------------------------------------------------------


def running_stack(settings: Settings) -> Any:
    """The stack `make up` started for these settings, or Unavailable."""
    from driftline.stack import Stack

    stack = Stack(settings=settings)
    recorded = stack.recorded()
    if not recorded or not stack.running():
        raise Unavailable(
            f"no running stack for {settings.home}; start it with `make up` "
            "(or pass --spec to let simulate start its own)"
        )
    stack.port, stack.mlflow_port = recorded["port"], recorded.get("mlflow_port")
    if stack.health() is None:
        raise Unavailable(f"the stack for {settings.home} does not answer at {stack.url}")
    return stack


def check_calendar(timeline: Timeline, settings: Settings) -> None:
    """The timeline's days, appended after the newest data, must all lie before today.

    A run's as-of is its reference time capped at the newest day of data (driftline.clock)
    and a drift-started run's reference is the wall clock: only a calendar behind the wall
    clock gives every trigger the simulated day's as-of.
    """
    newest = newest_day(settings.offline_dir, "transactions")
    if newest is None:
        return
    last = newest + timedelta(days=timeline.days)
    if last >= datetime.now(UTC).date():
        raise InvalidInput(
            f"{timeline.source}: {timeline.days} simulated days after the newest data "
            f"({newest}) would reach {last}, today or later; the synthetic calendar must stay "
            "behind the wall clock (a drift-started run's as-of is capped at the newest day of "
            "data, its reference is now): use a shorter timeline, or --spec (a fresh stack "
            "whose world ends early enough)"
        )


def simulate_on(
    stack: Any, timeline: Timeline, *, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Drive ``timeline`` through ``stack`` and score it; returns the result (not written)."""
    from driftline import registry

    settings = stack.settings
    check_calendar(timeline, settings)
    first = registry.alias_version(timeline.model, registry.CHAMPION, settings)
    if first is None:
        raise InvalidInput(
            f"{timeline.model} has no champion in {settings.home}; `make up` trains one"
        )
    started = time.monotonic()
    days = Driver(stack=stack, timeline=timeline, settings=settings, say=say).run()
    score_days(timeline.model, days, first, settings, say=say)
    return {
        "timeline": timeline.model_dump(),
        "model": timeline.model,
        "first_champion": first,
        "state_dir": str(settings.home),
        "wall_seconds": round(time.monotonic() - started, 1),
        "definitions": {
            "champion_serving": "the champion alias before the day's runs: the model that "
            "scored the day's transactions",
            "first_champion": "the champion when the simulation started, never retrained",
            "oracle": "trained in-process every morning on the window a retrain as of that "
            "morning reads (same split and code), always deployed, never registered",
            "days_to_recover": "days from the drift onset to the first matured day from which, "
            f"on every later matured day, driftline is within {RECOVERY_TOLERANCE:.0%} of the "
            "oracle and above the never-retrained model; 0 if driftline never fell "
            f"{DEGRADATION:.0%} below its pre-drift mean",
        },
        "summary": summarize(days),
        "days": days,
    }


_OWN_STACK_ISOLATED = (
    "AIRFLOW_HOME",
    "MLFLOW_TRACKING_URI",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__PLUGINS_FOLDER",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
)


@contextlib.contextmanager
def _own_environment(home: Path, models: Path) -> Iterator[None]:
    """Every setting pointed into ``home`` (as the e2e fixtures isolate a stack)."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if (
            key.startswith("DRIFTLINE_") and key != "DRIFTLINE_PRELOAD"
        ) or key in _OWN_STACK_ISOLATED:
            del os.environ[key]
    os.environ["DRIFTLINE_HOME"] = str(home)
    os.environ["DRIFTLINE_MODELS_DIR"] = str(models)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def first_simulated_day(timeline: Timeline, today: date) -> date:
    """The first synthetic day of a stack simulate starts itself: the timeline ends yesterday.

    A retrain the drift asset starts has no ``end_date``; its as-of is its run time on the
    wall clock capped at the newest day in the offline store (``clock.resolve_as_of``). A
    calendar that ran ahead of the wall clock would give every drift-started retrain today's
    as-of instead of its synthetic day's, training it on the same stale window each time."""
    return today - timedelta(days=timeline.days)


def simulate_with_spec(
    timeline: Timeline,
    spec_path: Path,
    *,
    work_dir: Path,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The timeline in a fresh embedded stack of its own whose only model spec is ``spec_path``."""
    from driftline.datagen import generate
    from driftline.stack import free_port, up

    home = work_dir / "state"
    models = work_dir / "models"
    spec = load_candidate_spec(spec_path, models)
    if spec.name != timeline.model:
        raise InvalidInput(
            f"--spec {spec_path} is for model {spec.name!r}, the timeline "
            f"{timeline.source} simulates {timeline.model!r}"
        )
    home.mkdir(parents=True, exist_ok=True)
    world = timeline.world
    with _own_environment(home, models):
        stack = None
        try:
            say(f"starting a stack for {spec_path} in {home}")
            # the world's history ends the day before the timeline's first day, and the
            # timeline ends yesterday: see first_simulated_day
            generate(
                offline_dir=get_settings().offline_dir,
                days=world.history_days,
                today=first_simulated_day(timeline, datetime.now(UTC).date()),
                seed=world.seed,
                n_cards=world.n_cards,
                n_merchants=world.n_merchants,
            )
            stack = up(
                port=free_port(),
                mlflow_port=None,
                model=timeline.model,
                world={
                    "n_cards": world.n_cards,
                    "n_merchants": world.n_merchants,
                    "seed": world.seed,
                },
                days=world.history_days,
                # Airflow's fixed log-server and health-check ports would collide with
                # another stack on this machine
                extra_env={
                    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
                },
                # the step lines only: the access summary would print one-off passwords
                say=lambda line: line.startswith("[") and say(f"  {line}"),
            )
            say(f"stack up at {stack.url}; simulating {timeline.days} days")
            result = simulate_on(stack, timeline, say=say)
        finally:
            if stack is not None:
                stack.stop()
    result["spec"] = str(spec_path)
    result["spec_values"] = spec.model_dump(mode="json", exclude={"source"})
    return result


# what an operator weighs when choosing between two specs, in the order the report shows it
COMPARED_FIGURES = (
    "drift_verdicts",
    "days_to_detect",
    "retrains",
    "promotions",
    "rejections",
    "inconclusive",
    "skipped_by_cooldown",
    "failed_retrains",
    "days_to_recover",
    "post_drift_mean_pr_auc_driftline",
    "post_drift_mean_pr_auc_first_champion",
    "post_drift_mean_pr_auc_oracle",
    "post_drift_mean_pr_auc_gain_over_never_retrained",
)


def _figures(summary: dict[str, Any]) -> dict[str, Any]:
    means = summary["post_drift_mean_pr_auc"]
    gain = (
        round(means["driftline"] - means["first_champion"], 4)
        if means.get("driftline") is not None and means.get("first_champion") is not None
        else None
    )
    flat = {f"post_drift_mean_pr_auc_{name}": value for name, value in means.items()}
    flat["post_drift_mean_pr_auc_gain_over_never_retrained"] = gain
    return {key: {**summary, **flat}.get(key) for key in COMPARED_FIGURES}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def spec_changes(first: dict[str, Any], second: dict[str, Any]) -> dict[str, list[Any]]:
    """Every spec value the second spec sets differently, by dotted key: [first, second]."""
    a, b = _flatten(first), _flatten(second)
    return {
        key: [a.get(key), b.get(key)]
        for key in sorted(a.keys() | b.keys())
        if a.get(key) != b.get(key)
    }


def compare(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What changes from the first spec to the second: the spec values, the decisions and the
    quality. ``side_by_side`` holds each figure per spec, ``second_minus_first`` the numeric
    difference (both values when one is not a number, e.g. "not within the timeline")."""
    first, second = (_figures(r["summary"]) for r in results[:2])
    difference: dict[str, Any] = {}
    for key in COMPARED_FIGURES:
        a, b = first[key], second[key]
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
        difference[key] = round(b - a, 4) if numbers else [a, b]
    comparison: dict[str, Any] = {"specs": [r["spec"] for r in results[:2]]}
    if all("spec_values" in r for r in results[:2]):
        comparison["spec_changes"] = spec_changes(
            results[0]["spec_values"], results[1]["spec_values"]
        )
    comparison["side_by_side"] = {key: [first[key], second[key]] for key in COMPARED_FIGURES}
    comparison["second_minus_first"] = difference
    return comparison


def simulate(
    timeline_path: Path,
    *,
    specs: list[Path] | None = None,
    out_dir: Path | None = None,
    settings: Settings | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run and write the simulation; returns the result. Nothing is written on failure."""
    from driftline.files import write_json
    from driftline.simulate_report import write_report

    timeline = load_timeline(timeline_path)
    specs = list(specs or [])
    if len(specs) > 2:
        raise InvalidInput(f"--spec given {len(specs)} times; compare one or two specs")
    with tempfile.TemporaryDirectory(prefix="driftline-simulate-") as scratch:
        for index, spec in enumerate(specs):  # every spec is checked before anything starts
            load_candidate_spec(spec, Path(scratch) / f"check{index}")
    settings = settings or get_settings()
    out = Path(out_dir) if out_dir else settings.runs_dir / "simulations" / timeline.name
    if not specs:
        check_calendar(timeline, settings)
        result = simulate_on(running_stack(settings), timeline, say=say)
    else:
        runs = []
        scratch = Path(tempfile.mkdtemp(prefix="driftline-simulate-"))
        try:
            for index, spec in enumerate(specs):
                runs.append(
                    simulate_with_spec(timeline, spec, work_dir=scratch / f"spec{index}", say=say)
                )
        except DriftlineError as exc:
            # the stacks' logs and state stay for inspection; nothing goes to the output
            raise type(exc)(f"{exc} (stack state and logs kept in {scratch})") from None
        shutil.rmtree(scratch, ignore_errors=True)
        result = (
            runs[0]
            if len(runs) == 1
            else {
                "timeline": runs[0]["timeline"],
                "model": timeline.model,
                "runs": runs,
                "comparison": compare(runs),
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    write_report(result, out)
    write_json(out / RESULT_FILE, result)
    return result
