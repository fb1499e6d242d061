"""Benchmark of drift-event latency on the embedded stack: `make bench-events`.

Starts the stack the way `make up` does, in its own state directory
($DRIFTLINE_HOME/bench/events), with the shipped spec but no cooldown (so every event starts
a run), then measures, for EVENTS events spaced SPACING seconds apart:

* row  — from a row written to ``drift_events`` (its ``created_at``) to the first task of
         the retrain it starts (``admit_trigger``) running;
* rest — from an asset event posted over the REST API (its ``timestamp``) to the same.

Each measured run is stopped (marked failed over REST) once its first task has started, so
the next event does not wait behind a whole retrain. Prints p50/p95 and writes
bench/results/event-latency.json. Run it under the machine's stack lock (`make bench-events`
does: `flock /tmp/driftline-stack.lock ...`), so no other live stack shares the fixed ports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "fraud_detection"
RETRAIN = f"{MODEL}_retrain"
WORLD = {"n_cards": 1200, "n_merchants": 150, "seed": 11}


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class Bench:
    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.token = stack.token("admin")

    def get(self, path: str) -> Any:
        status, body = self.stack.api("GET", path, token=self.token)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        return body

    def runs(self) -> dict[str, dict[str, Any]]:
        body = self.get(f"/api/v2/dags/{RETRAIN}/dagRuns?order_by=-run_after&limit=50")
        return {r["dag_run_id"]: r for r in body["dag_runs"]}

    def first_task_start(self, known: set[str], timeout: float = 180) -> tuple[str, datetime]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run_id, run in self.runs().items():
                if run_id in known or run["run_type"] != "asset_triggered":
                    continue
                ti = self.get(
                    f"/api/v2/dags/{RETRAIN}/dagRuns/{run_id}/taskInstances/admit_trigger"
                )
                if ti.get("start_date"):
                    return run_id, datetime.fromisoformat(ti["start_date"])
            time.sleep(0.5)
        raise RuntimeError(f"no retrain started within {timeout:.0f} s")

    def stop(self, run_id: str) -> None:
        """Let admit_trigger finish (it consumes the event, so no lease re-delivers it),
        then fail the run so the next event does not wait behind a whole retrain."""
        path = f"/api/v2/dags/{RETRAIN}/dagRuns/{run_id}/taskInstances/admit_trigger"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.get(path)["state"] not in (
            "success",
            "skipped",
            "failed",
        ):
            time.sleep(0.5)
        self.stack.api(
            "PATCH",
            f"/api/v2/dags/{RETRAIN}/dagRuns/{run_id}",
            {"state": "failed"},
            token=self.token,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            tis = self.get(f"/api/v2/dags/{RETRAIN}/dagRuns/{run_id}/taskInstances")
            if not any(t["state"] in ("running", "queued") for t in tis["task_instances"]):
                return
            time.sleep(1)

    def row_event(self) -> float:
        from driftline import monitoring
        from driftline.events import raise_event

        known = set(self.runs())
        event_id = raise_event(MODEL, {"reason": "latency bench"}, source="bench")
        created = monitoring.drift_event(event_id)["created_at"]
        run_id, started = self.first_task_start(known)
        self.stop(run_id)
        return (started - created).total_seconds()

    def rest_event(self) -> float:
        known = set(self.runs())
        assets = self.get(f"/api/v2/assets?name_pattern=drift://{MODEL}")["assets"]
        asset_id = next(a["id"] for a in assets if a["name"] == f"drift://{MODEL}")
        status, body = self.stack.api(
            "POST",
            "/api/v2/assets/events",
            {"asset_id": asset_id, "extra": {"reason": "latency bench"}},
            token=self.token,
        )
        if status != 200:
            raise RuntimeError(f"POST asset event: {status} {body}")
        posted = datetime.fromisoformat(body["timestamp"])
        run_id, started = self.first_task_start(known)
        self.stop(run_id)
        return (started - posted).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--spacing", type=float, default=10.0, help="seconds between events")
    args = parser.parse_args()

    import yaml

    home = Path(os.environ.get("DRIFTLINE_HOME", REPO / ".local")).resolve() / "bench" / "events"
    home.mkdir(parents=True, exist_ok=True)
    for key in list(os.environ):
        if key.startswith(("DRIFTLINE_", "AIRFLOW__")) or key in ("AIRFLOW_HOME",):
            del os.environ[key]
    os.environ["DRIFTLINE_HOME"] = str(home)
    models = home / "models"
    models.mkdir(exist_ok=True)
    raw = yaml.safe_load((REPO / "include" / "models" / f"{MODEL}.yaml").read_text())
    raw["drift"]["cooldown_hours"] = 0  # every event starts a run; the poll stays the shipped one
    (models / f"{MODEL}.yaml").write_text(yaml.safe_dump(raw))
    os.environ["DRIFTLINE_MODELS_DIR"] = str(models)

    from driftline.specs import load_spec
    from driftline.stack import free_port, up

    stack = up(port=free_port(), mlflow_port=free_port(), world=WORLD, days=44)
    try:
        bench = Bench(stack)
        results: dict[str, Any] = {
            "events": args.events,
            "spacing_s": args.spacing,
            "poll_s": load_spec(MODEL).drift.event_poll_seconds,
        }
        for kind, measure in (("row", bench.row_event), ("rest", bench.rest_event)):
            latencies = []
            for _ in range(args.events):
                latencies.append(measure())
                print(f"{kind}: {latencies[-1]:.1f} s", flush=True)
                time.sleep(args.spacing)
            results[kind] = {
                "p50_s": round(statistics.median(latencies), 2),
                "p95_s": round(_percentile(latencies, 0.95), 2),
                "max_s": round(max(latencies), 2),
                "all_s": [round(v, 2) for v in latencies],
            }
    finally:
        stack.stop()
    out = REPO / "bench" / "results" / "event-latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\n{'path':<6} {'p50':>7} {'p95':>7} {'max':>7}  (goal p95 <= 10 s)")
    for kind in ("row", "rest"):
        r = results[kind]
        print(f"{kind:<6} {r['p50_s']:>6.1f}s {r['p95_s']:>6.1f}s {r['max_s']:>6.1f}s")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
