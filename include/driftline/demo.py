"""`make demo`: the whole loop, headless, against the stack `make up` started.

1. a champion serves (make up trained it);
2. covariate-shifted days arrive and are materialized (feature_materialization);
3. the drift monitor detects the shift and updates the drift asset;
4. the asset starts the retrain, whose challenger is promoted or rejected by the policy;
5. a corrupted batch arrives; a retrain over it stops at validate_data, champion unchanged;
6. the bad batch is quarantined (kept for inspection, read by no stage), so the system is
   healthy again for the next run.

Every step states what it expected and what it saw; a table of events, runs, versions,
decisions and reasons ends the demo, and the exit code is non-zero if any step did not
behave as expected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from driftline import monitoring, offline, registry
from driftline.airflow_rest import AirflowRest, generated_world
from driftline.datagen import generate
from driftline.errors import DriftlineError
from driftline.settings import Settings
from driftline.stack import Stack

STEPS = 7  # the checks below, in order; a demo that stops early fails


@dataclass
class Step:
    name: str
    expected: str
    observed: str = ""
    ok: bool = False


class DemoFailed(DriftlineError):
    pass


class Demo:
    def __init__(
        self,
        stack: Stack,
        *,
        model: str = "fraud_detection",
        shift_days: int = 2,
        timeout: float = 900,
        say: Callable[[str], None] = print,
    ) -> None:
        self.stack = stack
        self.settings: Settings = stack.settings
        self.model = model
        self.shift_days = shift_days
        self.timeout = timeout
        self.say = say
        self.steps: list[Step] = []
        self.rows: list[tuple[str, str, str]] = []
        self.rest = AirflowRest(
            stack, error=DemoFailed, timeout=timeout, poll_seconds=3, token=stack.token("admin")
        )

    # --- registry ------------------------------------------------------------------------

    def _versions(self) -> list[str]:
        found = registry.client(self.settings).search_model_versions(f"name='{self.model}'")
        return sorted((str(v.version) for v in found), key=int)

    # --- the loop -----------------------------------------------------------------------

    def _check(self, step: Step, ok: bool, observed: str) -> None:
        step.ok, step.observed = ok, observed
        self.say(f"[{'ok' if ok else 'FAIL'}] {step.name}: {observed}")
        if not ok:
            raise DemoFailed(f"{step.name}: expected {step.expected}; saw {observed}")

    def _step(self, name: str, expected: str) -> Step:
        step = Step(name, expected)
        self.steps.append(step)
        self.say(f"... {name}: expecting {expected}")
        return step

    def run(self) -> bool:
        try:
            self._loop()
        except DemoFailed as failure:
            self.say(f"demo failed: {failure}")
        finally:
            self.say(self.table())
        return all(step.ok for step in self.steps) and len(self.steps) == STEPS

    def _loop(self) -> None:
        url = self.settings.monitoring_db_url
        step = self._step("champion serves", "a champion alias (make up trains the first one)")
        champion = registry.alias_version(self.model, registry.CHAMPION, self.settings)
        self._check(
            step, champion is not None, f"champion v{champion}" if champion else "no champion"
        )
        self.rows.append(("champion", f"v{champion}", "before the demo"))

        step = self._step(
            "shifted days arrive", f"{self.shift_days} covariate_shift days materialized"
        )
        result = generate(
            offline_dir=self.settings.offline_dir,
            scenario="covariate_shift",
            days=self.shift_days,
            **generated_world(self.settings.offline_dir),
        )
        states = []
        for day in result.days:
            window = {"start": day.isoformat(), "end": (day + timedelta(days=1)).isoformat()}
            run_id = self.rest.trigger("feature_materialization", window)
            states.append(self.rest.finished("feature_materialization", run_id)["state"])
        self._check(
            step, set(states) == {"success"}, f"{result.summary()}; materialization {states}"
        )
        self.rows.append(
            ("data", result.summary().split(":")[0], "feature_materialization " + ",".join(states))
        )

        step = self._step("drift detected", "the drift monitor's verdict drift, asset updated")
        as_of = (result.days[-1] + timedelta(days=1)).isoformat()
        retrains_before = {r["dag_run_id"] for r in self.rest.runs(f"{self.model}_retrain")}
        monitor_run = self.rest.trigger(f"{self.model}_drift_monitor", {"as_of": as_of})
        finished = self.rest.finished(f"{self.model}_drift_monitor", monitor_run)
        tasks = self.rest.tasks(f"{self.model}_drift_monitor", monitor_run)
        report = next(
            (
                r
                for r in monitoring.drift_report_log(self.model, url=url)
                if r["run_id"] == monitor_run
            ),
            None,
        )
        self._check(
            step,
            finished["state"] == "success" and tasks.get("announce_drift") == "success",
            f"run {finished['state']}, announce_drift {tasks.get('announce_drift')}, verdict "
            f"{report['verdict'] if report else 'none'}: {'; '.join(report['reasons']) if report else ''}",
        )
        self.rows.append(("drift report", f"#{report['id']}", "; ".join(report["reasons"])[:100]))

        step = self._step(
            "retrain through the drift asset", "an asset-triggered retrain that consumes the event"
        )
        retrain = self.rest.new_run(
            f"{self.model}_retrain",
            retrains_before,
            "asset_triggered",
            what="the asset-triggered retrain",
            timeout=300,
        )
        finished = self.rest.finished(f"{self.model}_retrain", retrain["dag_run_id"])
        consumed = [
            e
            for e in monitoring.drift_event_log(self.model, url=url)
            if e["consumed_by_run_id"] == retrain["dag_run_id"]
        ]
        self._check(
            step,
            finished["state"] == "success" and bool(consumed),
            f"run {retrain['dag_run_id']} {finished['state']}, consumed events {[e['id'] for e in consumed]}",
        )
        for event in consumed:
            self.rows.append(
                (
                    "drift event",
                    f"#{event['id']}",
                    f"{event['status']} by {event['consumed_by_run_id']}",
                )
            )

        step = self._step("policy decides", "the challenger promoted or rejected, with reasons")
        decision = next(
            (
                a
                for a in monitoring.audit_log(self.model, url=url)
                if a["run_id"] == retrain["dag_run_id"]
            ),
            None,
        )
        self._check(
            step,
            decision is not None and decision["action"] in ("promoted", "rejected"),
            f"v{decision['challenger_version']} {decision['action']}"
            if decision
            else "no decision recorded",
        )
        self.rows.append(
            (
                "decision",
                f"v{decision['challenger_version']} {decision['action']}",
                "; ".join(decision["reasons"])[:100],
            )
        )

        step = self._step(
            "corrupted batch blocked", "the retrain stops at validate_data, champion unchanged"
        )
        champion = registry.alias_version(self.model, registry.CHAMPION, self.settings)
        versions = self._versions()
        bad = generate(
            offline_dir=self.settings.offline_dir,
            days=1,
            corrupt=True,
            **generated_world(self.settings.offline_dir),
        )
        run_id = self.rest.trigger(
            f"{self.model}_retrain",
            {
                "end_date": (bad.days[-1] + timedelta(days=1)).isoformat(),
                "reason": "demo: corrupted batch",
            },
        )
        finished = self.rest.finished(f"{self.model}_retrain", run_id)
        tasks = self.rest.tasks(f"{self.model}_retrain", run_id)
        failed_checks = monitoring.validation_log(self.model, url=url)[0]["failed_checks"]
        after = registry.alias_version(self.model, registry.CHAMPION, self.settings)
        self._check(
            step,
            finished["state"] == "failed"
            and tasks.get("validate_data") == "failed"
            and after == champion
            and self._versions() == versions,
            f"run {finished['state']}, validate_data {tasks.get('validate_data')}, champion "
            f"v{champion} -> v{after}, failed checks {[c['name'] for c in failed_checks]}",
        )
        self.rows.append(
            ("validation", f"run {run_id}", ", ".join(c["name"] for c in failed_checks)[:100])
        )

        step = self._step(
            "bad batch quarantined", "the corrupted day moved out of the offline store"
        )
        day = bad.days[-1]
        target = offline.quarantine_day(
            self.settings.offline_dir, day, f"demo: validation run {run_id} failed"
        )
        days = offline.list_days(self.settings.offline_dir)
        self._check(
            step,
            day not in days and days[-1] == result.days[-1],
            f"{day} moved to {target}; newest day now {days[-1] if days else 'none'}",
        )
        self.rows.append(("quarantine", day.isoformat(), str(target)))
        self.rows.append(("champion", f"v{after}", "after the demo"))

    def table(self) -> str:
        width = max((len(a) for a, _, _ in self.rows), default=10)
        lines = ["", "what happened:"]
        lines += [f"  {kind:<{width}}  {what:<24}  {detail}" for kind, what, detail in self.rows]
        lines.append("")
        lines += [
            f"  [{'ok' if s.ok else 'FAIL'}] {s.name}: {s.observed or 'not reached'}"
            for s in self.steps
        ]
        return "\n".join(lines)
