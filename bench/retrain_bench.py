"""Benchmark of the retrain stages: `make bench` (SIZES=100k,1m).

For each size (labeled rows in the training window) it generates a world of that size once
(cached under $DRIFTLINE_HOME/bench/<size>), then measures:

* direct — the stage functions called one after another in one Python process;
* dag    — the same stages as fraud_detection_retrain under `airflow dags test`
           (real Airflow: metadata DB, XCom, task state), per task from the task instances;
* floor  — the point-in-time join as one raw DuckDB ASOF JOIN over the same parquet files,
           beside Feast's get_historical_features for the same entity rows.

Prints a table per size and writes bench/results/retrain-<size>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.rss import PeakRSS, stage  # noqa: E402

MODEL = "fraud_detection"
START = date(2026, 1, 1)
WARMUP_DAYS, WINDOW_DAYS, DELAY_DAYS = 8, 28, 7
SIZES = {"100k": 100_000, "1m": 1_000_000}
TARGETS_1M = {
    "whole retrain": "<= 90 s",
    "peak RSS": "<= 4 GB",
    "DAG overhead": "<= 25 %",
    "Feast join": "<= 5x floor",
}


def _env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DRIFTLINE_", "AIRFLOW", "MLFLOW_"))
    }
    env["DRIFTLINE_HOME"] = str(home)
    os.environ["DRIFTLINE_HOME"] = str(home)  # the orchestrator measures one size at a time
    from driftline.settings import get_settings

    env.update(get_settings().airflow_env())
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow' / 'airflow.db'}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def prepare(size: str, home: Path) -> datetime:
    """Generate the world once; returns the as-of time of the benchmark runs."""
    rows = SIZES[size]
    days = WARMUP_DAYS + WINDOW_DAYS + DELAY_DAYS
    as_of = datetime(START.year, START.month, START.day, tzinfo=UTC) + timedelta(days=days)
    marker = home / "prepared.json"
    if marker.exists():
        return as_of
    env = _env(home)
    cards = max(200, round(rows / WINDOW_DAYS / 1.4))
    merchants = max(300, cards // 10)
    print(
        f"[{size}] generating {days} days for ~{rows} labeled rows ({cards} cards) ...", flush=True
    )
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline.cli",
            "generate",
            "--days",
            str(days),
            "--start",
            START.isoformat(),
            "--cards",
            str(cards),
            "--merchants",
            str(merchants),
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [sys.executable, "-m", "driftline.cli", "feast", "apply"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker.write_text(json.dumps({"generated_in_s": round(time.perf_counter() - started, 1)}))
    return as_of


def direct(home: Path, as_of: datetime, run_id: str) -> dict:
    """Run in a child process: every stage in one interpreter, timed."""
    os.environ["DRIFTLINE_HOME"] = str(home)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from driftline import retrain
    from driftline.lineage import RunContext

    context = RunContext(dag_id="bench-direct", run_id=run_id, triggered_by="bench")
    results: dict = {}
    with PeakRSS(os.getpid()) as sampler:
        started = time.perf_counter()
        with stage(results, "build_training_set", sampler):
            built = retrain.build(MODEL, as_of=as_of, context=context)
        directory = built["run_dir"]
        with stage(results, "validate_data", sampler):
            retrain.validate(MODEL, directory, context=context)
        with stage(results, "train", sampler):
            trained = retrain.train(MODEL, directory, context=context)
        with stage(results, "evaluate", sampler):
            retrain.evaluate(MODEL, directory, trained["version"])
        with stage(results, "decide", sampler):
            decision = retrain.decide(MODEL, directory, context=context)
        with stage(results, "promote_or_keep", sampler):
            if decision["promote"]:
                retrain.promote(MODEL, directory, context=context)
            else:
                retrain.keep_champion(MODEL, directory, context=context)
        total = time.perf_counter() - started
    peak = max(values["peak_rss_gb"] for values in results.values())
    return {
        "stages": results,
        "total_s": round(total, 2),
        "peak_rss_gb": peak,
        "labeled_rows": built["fingerprint"]["rows"],
        "recent_rows": built["fingerprint"]["recent_rows"],
    }


def join_floor(home: Path, as_of: datetime) -> dict:
    """Feast's point-in-time join vs a raw DuckDB ASOF JOIN of the same entity rows."""
    os.environ["DRIFTLINE_HOME"] = str(home)
    import duckdb

    from driftline.feature_store import get_store
    from driftline.offline import table_glob
    from driftline.settings import get_settings
    from driftline.specs import load_spec
    from driftline.training_set import entity_rows, training_window

    settings = get_settings()
    spec = load_spec(MODEL)
    window = training_window(spec, as_of)
    rows = entity_rows(spec, window, settings.offline_dir)
    rows = rows[rows["event_timestamp"] < window.end]
    results: dict = {"entity_rows": len(rows)}
    with PeakRSS(os.getpid()) as sampler:
        store = get_store(settings)
        service = store.get_feature_service(spec.feature_service)
        with stage(results, "feast_get_historical_features", sampler):
            feast_frame = store.get_historical_features(entity_df=rows, features=service).to_df()
        with stage(results, "duckdb_asof_join", sampler), duckdb.connect() as con:
            con.register("entities", rows)
            floor = con.execute(
                f"""
                    SELECT e.*, c.* EXCLUDE (card_id, event_timestamp, date),
                           m.* EXCLUDE (merchant_id, event_timestamp, date)
                    FROM entities e
                    ASOF LEFT JOIN read_parquet('{table_glob(settings.offline_dir, "card_features")}') c
                      ON e.card_id = c.card_id AND e.event_timestamp >= c.event_timestamp
                    ASOF LEFT JOIN read_parquet('{table_glob(settings.offline_dir, "merchant_features")}') m
                      ON e.merchant_id = m.merchant_id AND e.event_timestamp >= m.event_timestamp
                    """
            ).df()
    results["feast_rows"], results["floor_rows"] = len(feast_frame), len(floor)
    return results


def dag(home: Path, as_of: datetime) -> dict:
    """fraud_detection_retrain under `airflow dags test`, per task from the metadata DB."""
    env = _env(home)
    conf = json.dumps({"end_date": as_of.date().isoformat(), "reason": "bench"})
    command = [
        str(Path(sys.executable).parent / "airflow"),
        "dags",
        "test",
        f"{MODEL}_retrain",
        as_of.isoformat(),
        "--conf",
        conf,
    ]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    with PeakRSS(process.pid) as sampler:
        _, stderr = process.communicate()
        peak = sampler.peak
    total = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"airflow dags test failed:\n{stderr[-4000:]}")
    with sqlite3.connect(home / "airflow" / "airflow.db") as db:
        run_id, run_state = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
            (f"{MODEL}_retrain",),
        ).fetchone()
        tasks = db.execute(
            "SELECT task_id, state, duration FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (f"{MODEL}_retrain", run_id),
        ).fetchall()
        # `dags test` stamps the run's start_date with the logical date, so the run's span is
        # taken from its task instances: first task start to last task end
        first_start, last_end = db.execute(
            "SELECT MIN(start_date), MAX(end_date) FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (f"{MODEL}_retrain", run_id),
        ).fetchone()
    run_s = (datetime.fromisoformat(last_end) - datetime.fromisoformat(first_start)).total_seconds()
    return {
        "state": run_state,
        "total_s": round(total, 2),
        "run_s": round(run_s, 2),
        "peak_rss_gb": round(peak / 1e9, 2),
        "tasks": {
            task: {"state": state, "seconds": round(duration or 0.0, 2)}
            for task, state, duration in tasks
        },
    }


def report(size: str, result: dict) -> str:
    d, g, f = result["direct"], result["dag"], result["floor"]
    lines = [
        f"\n## retrain benchmark, {size} ({d['labeled_rows']} labeled rows, {d['recent_rows']} recent rows)\n",
        "| stage | direct s | direct peak RSS GB | DAG task s |",
        "|---|---|---|---|",
    ]
    names = {"promote_or_keep": ("promote", "keep_champion")}
    for name, values in d["stages"].items():
        task_ids = names.get(name, (name,))
        task_s = sum(g["tasks"].get(t, {}).get("seconds", 0.0) for t in task_ids)
        lines.append(f"| {name} | {values['seconds']} | {values['peak_rss_gb']} | {task_s:.2f} |")
    overhead = (g["run_s"] - d["total_s"]) / d["total_s"] * 100
    process_overhead = (g["total_s"] - d["total_s"]) / d["total_s"] * 100
    ratio = f["feast_get_historical_features"]["seconds"] / max(
        f["duckdb_asof_join"]["seconds"], 1e-6
    )
    lines += [
        f"| **whole retrain** | **{d['total_s']}** | **{d['peak_rss_gb']}** | **{g['run_s']}** (DAG run) |",
        "",
        f"- DAG overhead over the direct run: {overhead:.0f} % (first task start to last task end, {g['state']}); "
        f"{process_overhead:.0f} % counting the `airflow dags test` process from its start "
        f"({g['total_s']} s, peak RSS {g['peak_rss_gb']} GB)",
        f"- Feast point-in-time join of {f['entity_rows']} rows: {f['feast_get_historical_features']['seconds']} s "
        f"(peak {f['feast_get_historical_features']['peak_rss_gb']} GB); raw DuckDB ASOF JOIN floor: "
        f"{f['duckdb_asof_join']['seconds']} s (peak {f['duckdb_asof_join']['peak_rss_gb']} GB); ratio {ratio:.1f}x",
    ]
    if size == "1m":
        lines.append("- targets at 1M: " + ", ".join(f"{k} {v}" for k, v in TARGETS_1M.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100k,1m", help="comma-separated: 100k, 1m")
    parser.add_argument("--child", choices=["direct", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--as-of", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        home, as_of = Path(args.home), datetime.fromisoformat(args.as_of)
        run = (
            direct(home, as_of, f"direct-{int(time.time())}")
            if args.child == "direct"
            else join_floor(home, as_of)
        )
        print("RESULT " + json.dumps(run))
        return

    root = Path(os.environ.get("DRIFTLINE_HOME", REPO / ".local")).resolve() / "bench"
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    for size in args.sizes.split(","):
        if size not in SIZES:
            raise SystemExit(f"--sizes {size!r} is unknown; allowed: {', '.join(SIZES)}")
        home = root / size
        as_of = prepare(size, home)
        env = _env(home)
        result = {
            "size": size,
            "as_of": as_of.isoformat(),
            "measured_at": datetime.now(UTC).isoformat(),
        }
        for child in ("direct", "floor"):
            print(f"[{size}] {child} ...", flush=True)
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    child,
                    "--home",
                    str(home),
                    "--as-of",
                    as_of.isoformat(),
                ],
                env=env,
                check=False,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(f"[{size}] {child} failed:\n{done.stderr[-4000:]}")
            result[child] = json.loads(
                next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:]
            )
        print(f"[{size}] dag ...", flush=True)
        result["dag"] = dag(home, as_of)
        (out_dir / f"retrain-{size}.json").write_text(json.dumps(result, indent=2))
        print(report(size, result), flush=True)


if __name__ == "__main__":
    main()
