"""Benchmark of the retrain stages: `make bench` (SIZES=100k,1m; also 5m, 10m).

For each size (labeled rows in the training window) it generates a world of that size once,
day by day (cached under $DRIFTLINE_HOME/bench/<size>; an interrupted generation resumes),
trains a first champion on the week before, and keeps that state as the baseline. Then it
measures, each three times, every run starting from the baseline (the same champion, the
same registry, the same metadata DB):

* direct — the tasks of fraud_detection_retrain called one after another in one process;
* dag    — fraud_detection_retrain under `airflow dags test` (real Airflow: metadata DB,
           XCom, task state), per task from the task instances;
* join   — the point-in-time join of the training rows three ways, each in a fresh process:
           Feast with the configured store (driftline's ASOF plugin), Feast with its own
           DuckDB store, and the raw DuckDB ASOF JOIN over the same parquet files (the floor).

Every figure is the median of the three runs, reported with its min and max. The goals of
issue 14 are checked; a missed goal makes the exit status 1 (`make bench`, never `make test`).

While profiling, `--only direct` (or dag, join) and `--repeats N` measure a part of that, and
write bench/results/retrain-<size>.partial.json instead, with no goals checked: a partial run
never replaces the full result.

Invariants:
* `--sizes` is checked before anything runs: an unknown size names the allowed ones.
* Free memory is checked before anything runs and again before each step, against what the
  size needs (NEEDS_GB, scaled from measured runs); a world that does not fit stops the bench
  with what it needed, instead of swapping the machine. The Feast-DuckDB comparison, which
  needs about 2 GB per million entity rows, is skipped with that reason when it does not fit.
* Results go to bench/results/retrain-<size>.json with the machine (cpu, cores, memory,
  python, package versions, git commit) and the load average seen before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.rss import PeakRSS, stage  # noqa: E402

MODEL = "fraud_detection"
START = date(2026, 1, 1)
# warm-up (merchants have no matured labels before day 8), a week for the first champion's
# window to end before the measured one, the training window, the label delay
WARMUP_DAYS, CHAMPION_DAYS, WINDOW_DAYS, DELAY_DAYS = 8, 7, 28, 7
GENERATE_CHUNK_DAYS = 7
REPEATS = 3
SIZES = {"100k": 100_000, "1m": 1_000_000, "5m": 5_000_000, "10m": 10_000_000}
# Peak memory per step, GB = base + per million labeled rows, above the peaks measured in
# bench/results/retrain-100k.json and retrain-1m.json (1m: generate 1.06, retrain 2.8 direct
# and 3.21 under `dags test`, joins 1.91 / 2.05 / 3.18 GB), the earlier 5M
# measurement of Feast's DuckDB store (10.1 GB), and, since the training set streams to disk
# and the join goes in pieces, a 10M retrain at 7.4 GB direct (generation: 7.0 GB).
NEEDS_GB: dict[str, tuple[float, float]] = {
    "generate": (0.6, 0.9),
    "retrain": (1.6, 0.9),
    "join_plugin": (0.8, 1.4),
    "join_floor": (0.6, 1.6),
    "join_feast_duckdb": (1.0, 2.3),
}
HEADROOM_GB = 1.0  # left to the rest of the machine
PACKAGES = (
    "feast",
    "duckdb",
    "ibis-framework",
    "pandas",
    "pyarrow",
    "xgboost",
    "mlflow",
    "evidently",
    "apache-airflow",
    "numpy",
)
JOINS = ("join_plugin", "join_floor", "join_feast_duckdb")
PARTS = ("direct", "dag", "join")
# item 2 of issue 14, per size: (goal, figure, limit)
GOALS: dict[str, list[tuple[str, str, float]]] = {
    "1m": [
        ("whole retrain <= 30 s (direct, median)", "direct_total_s", 30.0),
        ("peak RSS <= 3 GB (direct, median)", "direct_peak_rss_gb", 3.0),
        ("Feast join <= 2x the raw ASOF floor (medians)", "join_ratio_to_floor", 2.0),
    ],
    "5m": [("Feast join <= 2.5x the raw ASOF floor (medians)", "join_ratio_to_floor", 2.5)],
    "10m": [("retrain peak RSS <= 12 GB (direct, median)", "direct_peak_rss_gb", 12.0)],
}


# --- sizes, memory, machine -------------------------------------------------------------


def parse_sizes(text: str) -> list[str]:
    sizes = [s.strip().lower() for s in text.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        raise SystemExit(
            f"SIZES={text!r}: unknown size {', '.join(unknown) or '(none given)'}; "
            f"allowed: {', '.join(SIZES)} (comma-separated)"
        )
    return sizes


def needs_gb(step: str, size: str) -> float:
    base, per_million = NEEDS_GB[step]
    return round(base + per_million * SIZES[size] / 1e6, 1)


def available_gb() -> float:
    import psutil

    return psutil.virtual_memory().available / 1e9


def check_memory(size: str, steps: tuple[str, ...]) -> None:
    """Stop, saying what was needed, when a step of this size would not fit in free memory."""
    free = available_gb()
    for step in steps:
        needed = needs_gb(step, size)
        if needed + HEADROOM_GB > free:
            raise SystemExit(
                f"[{size}] {step} needs about {needed} GB (+{HEADROOM_GB} GB headroom) and "
                f"{free:.1f} GB is available now; stopping before it swaps the machine. "
                "Free memory or run a smaller size (SIZES=...)."
            )


def fits(step: str, size: str) -> tuple[bool, str]:
    free, needed = available_gb(), needs_gb(step, size)
    return needed + HEADROOM_GB <= free, f"needs about {needed} GB, {free:.1f} GB available"


def machine() -> dict[str, Any]:
    import psutil

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip()
    # uncommitted changes outside bench/results/ mean the commit is not the code measured
    dirty = [
        line for line in git("status", "--porcelain").splitlines() if "bench/results/" not in line
    ]
    return {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": commit,
        "git_dirty": bool(dirty),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


# --- the world and its baseline state ---------------------------------------------------


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


def as_of_times() -> tuple[datetime, datetime]:
    """(the first champion's as-of, the measured runs' as-of): a week apart."""
    days = WARMUP_DAYS + CHAMPION_DAYS + WINDOW_DAYS + DELAY_DAYS
    as_of = datetime(START.year, START.month, START.day, tzinfo=UTC) + timedelta(days=days)
    return as_of - timedelta(days=CHAMPION_DAYS), as_of


def _run_measured(command: list[str], env: dict[str, str], what: str) -> tuple[float, float]:
    """Run a child to completion; returns (seconds, peak RSS GB of its process tree)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    with PeakRSS(process.pid) as sampler:
        _, stderr = process.communicate()
        peak = sampler.peak
    if process.returncode != 0:
        raise SystemExit(f"{what} failed (exit {process.returncode}):\n{stderr[-4000:]}")
    return time.perf_counter() - started, peak / 1e9


def prepare(size: str, home: Path) -> dict[str, Any]:
    """Generate the world (day by day, resumable), register Feast, migrate Airflow, train the
    first champion, and keep that state as the baseline every measured run starts from."""
    marker = home / "prepared.json"
    if marker.exists():
        return json.loads(marker.read_text())
    env = _env(home)
    rows = SIZES[size]
    days = WARMUP_DAYS + CHAMPION_DAYS + WINDOW_DAYS + DELAY_DAYS
    cards = max(200, round(rows / WINDOW_DAYS / 1.4))
    merchants = max(300, cards // 10)
    from driftline import offline

    done = len(offline.list_days(home / "offline", "transactions"))
    print(f"[{size}] generating {days} days ({cards} cards) for ~{rows} labeled rows", flush=True)
    seconds, peak = 0.0, 0.0
    while done < days:
        chunk = min(GENERATE_CHUNK_DAYS, days - done)
        check_memory(size, ("generate",))
        command = [sys.executable, "-m", "driftline.cli", "generate", "--days", str(chunk)]
        command += ["--cards", str(cards), "--merchants", str(merchants)]
        if done == 0:
            command += ["--start", START.isoformat()]
        took, used = _run_measured(command, env, f"[{size}] generate")
        seconds, peak, done = seconds + took, max(peak, used), done + chunk
        print(f"[{size}]   {done}/{days} days, {took:.0f} s, peak {used:.2f} GB", flush=True)
    subprocess.run(
        [sys.executable, "-m", "driftline.cli", "feast", "apply"],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
    )
    champion_as_of, _ = as_of_times()
    print(f"[{size}] first champion (as of {champion_as_of.date()}) ...", flush=True)
    check_memory(size, ("retrain",))
    first = _child(home, "champion", champion_as_of)
    if first["outcome"] != "promote":
        raise SystemExit(f"[{size}] the first retrain did not promote a champion: {first}")
    baseline = home / "baseline"
    shutil.rmtree(baseline, ignore_errors=True)
    for name in STATE:
        _copy(home / name, baseline / name)
    prepared = {
        "days": days,
        "cards": cards,
        "merchants": merchants,
        "generated_in_s": round(seconds, 1),
        "generate_peak_rss_gb": round(peak, 2),
        "champion_version": first["version"],
    }
    marker.write_text(json.dumps(prepared, indent=2))
    return prepared


# what a retrain changes; restored from the baseline before every measured run
STATE = ("mlflow", "monitoring.db", "airflow/airflow.db")


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    elif source.exists():
        shutil.copy2(source, target)


def restore(home: Path, keep_runs: set[str]) -> None:
    for name in STATE:
        path = home / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        _copy(home / "baseline" / name, path)
    # the measured runs' directories (a training set each) would fill the disk; the
    # champion's stays, and the newest, which the drift benchmark reads
    runs = home / "runs" / MODEL
    if runs.is_dir():
        for directory in sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime)[:-1]:
            if directory.name not in keep_runs:
                shutil.rmtree(directory)


# --- children: one measurement each, in a fresh process ----------------------------------


def run_tasks(home: Path, as_of: datetime, run_id: str) -> dict[str, Any]:
    """The DAG's tasks in one process. admit_trigger is a no-op for a run not started by an
    asset event (the benchmark's DAG runs are manual too); notify reads the decision."""
    os.environ["DRIFTLINE_HOME"] = str(home)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from driftline import retrain
    from driftline.lineage import RunContext

    context = RunContext(dag_id="bench-direct", run_id=run_id, triggered_by="bench")
    results: dict[str, Any] = {}
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
        with stage(results, "notify", sampler):
            json.loads((Path(directory) / retrain.DECISION_FILE).read_text())
        total = time.perf_counter() - started
    return {
        "stages": results,
        "total_s": round(total, 2),
        "peak_rss_gb": max(values["peak_rss_gb"] for values in results.values()),
        "labeled_rows": built["fingerprint"]["rows"],
        "recent_rows": built["fingerprint"]["recent_rows"],
        "outcome": decision["outcome"],
        "champion_before": decision["champion_version"],
        "version": trained["version"],
        "run_dir": directory,
    }


def join_once(home: Path, as_of: datetime, how: str) -> dict[str, Any]:
    """One point-in-time join of the training window's rows; only the join is timed."""
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
    rows = rows[rows["event_timestamp"] < window.end].reset_index(drop=True)
    results: dict[str, Any] = {"entity_rows": len(rows)}
    store = None
    if how != "join_floor":
        store = get_store(settings, offline_store="duckdb" if how == "join_feast_duckdb" else None)
        results["offline_store"] = type(store.config.offline_store).__name__
        service = store.get_feature_service(spec.feature_service)
    with PeakRSS(os.getpid()) as sampler, stage(results, "join", sampler):
        if store is not None:
            frame = store.get_historical_features(entity_df=rows, features=service).to_df()
        else:
            with duckdb.connect() as con:
                con.register("entities", rows)
                cards = table_glob(settings.offline_dir, "card_features")
                merchants = table_glob(settings.offline_dir, "merchant_features")
                frame = con.execute(
                    f"""
                        SELECT e.*, c.* EXCLUDE (card_id, event_timestamp, date),
                               m.* EXCLUDE (merchant_id, event_timestamp, date)
                        FROM entities e
                        ASOF LEFT JOIN read_parquet('{cards}') c
                          ON e.card_id = c.card_id AND e.event_timestamp >= c.event_timestamp
                        ASOF LEFT JOIN read_parquet('{merchants}') m
                          ON e.merchant_id = m.merchant_id
                          AND e.event_timestamp >= m.event_timestamp
                        """
                ).df()
    results["result_rows"], results["result_columns"] = len(frame), frame.shape[1]
    return results


def _child(home: Path, what: str, as_of: datetime) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", what, "--home", str(home)]
    command += ["--as-of", as_of.isoformat()]
    done = subprocess.run(command, env=_env(home), check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"[{home.name}] {what} failed:\n{done.stderr[-4000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def dag_once(home: Path, as_of: datetime) -> dict[str, Any]:
    """fraud_detection_retrain under `airflow dags test`, per task from the metadata DB."""
    env = _env(home)
    conf = json.dumps({"end_date": as_of.date().isoformat(), "reason": "bench"})
    command = [str(Path(sys.executable).parent / "airflow"), "dags", "test", f"{MODEL}_retrain"]
    command += [as_of.isoformat(), "--conf", conf]
    total, peak = _run_measured(command, env, f"[{home.name}] airflow dags test")
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
    if run_state != "success":
        raise SystemExit(f"[{home.name}] the DAG run ended {run_state}: {tasks}")
    run_s = (datetime.fromisoformat(last_end) - datetime.fromisoformat(first_start)).total_seconds()
    return {
        "state": run_state,
        "process_s": round(total, 2),
        "run_s": round(run_s, 2),
        "peak_rss_gb": round(peak, 2),
        "tasks": {
            task: {"state": state, "seconds": round(duration or 0.0, 2)}
            for task, state, duration in tasks
        },
    }


# --- one size ----------------------------------------------------------------------------


def _repeat(
    name: str, size: str, once: Callable[[], dict[str, Any]], repeats: int
) -> list[dict[str, Any]]:
    runs = []
    for i in range(repeats):
        before = load_average()
        print(f"[{size}] {name} {i + 1}/{repeats} (load {before}) ...", flush=True)
        run = once()
        run["load_average_before"], run["load_average_after"] = before, load_average()
        runs.append(run)
    return runs


def measure(
    size: str,
    root: Path,
    save: Callable[[dict[str, Any]], None],
    *,
    parts: tuple[str, ...] = PARTS,
    repeats: int = REPEATS,
) -> dict[str, Any]:
    """Measure one size; ``save`` is called after each phase, so an interrupted run keeps
    what it measured (``complete`` is false until the end). ``parts`` and ``repeats`` other
    than all of them and REPEATS make a partial result: summarized, goals not checked."""
    home = root / size
    check_memory(size, ("generate", "retrain", "join_plugin", "join_floor"))
    world = prepare(size, home)
    _, as_of = as_of_times()
    keep = {p.name for p in (home / "runs" / MODEL).iterdir()}
    result: dict[str, Any] = {
        "size": size,
        "as_of": as_of.isoformat(),
        "measured_at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "load_average_start": load_average(),
        "world": world,
        "repeats": repeats,
        "parts": list(parts),
        "complete": False,
    }

    def direct() -> dict[str, Any]:
        check_memory(size, ("retrain",))
        restore(home, keep)
        return _child(home, "direct", as_of)

    def dag() -> dict[str, Any]:
        check_memory(size, ("retrain",))
        restore(home, keep)
        return dag_once(home, as_of)

    if "direct" in parts:
        result["direct"] = {"runs": _repeat("direct", size, direct, repeats)}
        save(result)
    if "dag" in parts:
        result["dag"] = {"runs": _repeat("dag", size, dag, repeats)}
        save(result)
    result["join"] = {}
    for how in JOINS if "join" in parts else ():
        ok, why = fits(how, size)
        if not ok:
            result["join"][how] = {"skipped": why}
            print(f"[{size}] {how} skipped: {why}", flush=True)
            continue
        result["join"][how] = {
            "runs": _repeat(how, size, lambda how=how: _child(home, how, as_of), repeats)
        }
        save(result)
    result["load_average_end"] = load_average()
    if parts == PARTS and repeats == REPEATS:
        summarize(result)
    else:
        summarize_partial(result)
    result["complete"] = True
    return result


def _summarize_direct(direct: dict[str, Any]) -> None:
    """Median, min and max of the direct runs: whole, peak, and per stage; their outcomes."""
    runs = direct["runs"]
    direct["total_s"] = spread([r["total_s"] for r in runs])
    direct["peak_rss_gb"] = spread([r["peak_rss_gb"] for r in runs])
    direct["stages"] = {
        name: {
            "seconds": spread([r["stages"][name]["seconds"] for r in runs]),
            "peak_rss_gb": spread([r["stages"][name]["peak_rss_gb"] for r in runs]),
        }
        for name in runs[0]["stages"]
    }
    direct["outcomes"] = [r["outcome"] for r in runs]


def summarize_partial(result: dict[str, Any]) -> None:
    """The medians of what a partial run measured; no goals (they need every part)."""
    if "direct" in result:
        _summarize_direct(result["direct"])
    if "dag" in result:
        result["dag"]["run_s"] = spread([r["run_s"] for r in result["dag"]["runs"]])
    for join in result["join"].values():
        if "runs" in join:
            join["seconds"] = spread([r["join"]["seconds"] for r in join["runs"]])
    result["goals"] = []


def summarize(result: dict[str, Any]) -> None:
    """Median, min and max of every figure; the goals checked."""
    direct, dag = result["direct"], result["dag"]
    _summarize_direct(direct)
    direct["champion_before"] = sorted({r["champion_before"] for r in direct["runs"]})
    dag["run_s"] = spread([r["run_s"] for r in dag["runs"]])
    dag["process_s"] = spread([r["process_s"] for r in dag["runs"]])
    dag["peak_rss_gb"] = spread([r["peak_rss_gb"] for r in dag["runs"]])
    dag["tasks"] = {
        task: spread([r["tasks"].get(task, {}).get("seconds", 0.0) for r in dag["runs"]])
        for task in dag["runs"][0]["tasks"]
    }
    dag["task_states"] = [{t: v["state"] for t, v in r["tasks"].items()} for r in dag["runs"]]
    result["dag_overhead_pct"] = round(
        (dag["run_s"]["median"] - direct["total_s"]["median"]) / direct["total_s"]["median"] * 100,
        1,
    )
    for join in result["join"].values():
        if "runs" in join:
            join["seconds"] = spread([r["join"]["seconds"] for r in join["runs"]])
            join["peak_rss_gb"] = spread([r["join"]["peak_rss_gb"] for r in join["runs"]])
            join["entity_rows"] = join["runs"][0]["entity_rows"]
    floor = result["join"]["join_floor"]["seconds"]["median"]
    figures = {
        "direct_total_s": direct["total_s"]["median"],
        "direct_peak_rss_gb": direct["peak_rss_gb"]["median"],
        "join_ratio_to_floor": round(
            result["join"]["join_plugin"]["seconds"]["median"] / max(floor, 1e-6), 2
        ),
    }
    feast_duckdb = result["join"]["join_feast_duckdb"]
    if "seconds" in feast_duckdb:
        figures["feast_duckdb_ratio_to_floor"] = round(
            feast_duckdb["seconds"]["median"] / max(floor, 1e-6), 2
        )
    result["figures"] = figures
    result["goals"] = [
        {"goal": goal, "value": figures[figure], "limit": limit, "met": figures[figure] <= limit}
        for goal, figure, limit in GOALS.get(result["size"], [])
    ]


def report(result: dict[str, Any]) -> str:
    d, g, j = result["direct"], result["dag"], result["join"]
    first = d["runs"][0]

    def fmt(s: dict[str, float], unit: str = "s") -> str:
        return f"{s['median']} {unit} ({s['min']}–{s['max']})"

    lines = [
        f"\n## retrain benchmark, {result['size']} ({first['labeled_rows']} labeled rows, "
        f"{first['recent_rows']} recent rows); median (min–max) of {result['repeats']} runs; "
        f"load average {result['load_average_start']} → {result['load_average_end']}\n",
        "| task | direct | direct peak RSS | DAG task |",
        "|---|---|---|---|",
    ]
    names = {"promote_or_keep": ("promote", "keep_champion")}
    for name, values in d["stages"].items():
        tasks = [t for t in names.get(name, (name,)) if t in g["tasks"]]
        dag_task = " + ".join(fmt(g["tasks"][t]) for t in tasks if g["tasks"][t]["max"] > 0)
        lines.append(
            f"| {name} | {fmt(values['seconds'])} | {fmt(values['peak_rss_gb'], 'GB')} | {dag_task or '-'} |"
        )
    lines.append(
        f"| admit_trigger | - | - | {fmt(g['tasks'].get('admit_trigger', spread([0.0])))} |"
    )
    lines += [
        f"| **whole retrain** | **{fmt(d['total_s'])}** | **{fmt(d['peak_rss_gb'], 'GB')}** | "
        f"**{fmt(g['run_s'])}** (first task start to last task end) |",
        "",
        f"- both paths start from the same champion (version {d['champion_before']}); "
        f"outcomes direct {d['outcomes']}",
        f"- DAG overhead over the direct run: {result['dag_overhead_pct']} % (medians); the "
        f"`airflow dags test` process from its start: {fmt(g['process_s'])}, peak "
        f"{fmt(g['peak_rss_gb'], 'GB')}",
    ]
    labels = {
        "join_plugin": "Feast, driftline ASOF store",
        "join_feast_duckdb": "Feast, Feast's DuckDB store",
        "join_floor": "raw DuckDB ASOF JOIN (floor)",
    }
    floor = j["join_floor"]["seconds"]["median"]
    for how in JOINS:
        join = j[how]
        if "skipped" in join:
            lines.append(f"- join, {labels[how]}: skipped ({join['skipped']})")
            continue
        lines.append(
            f"- join of {join['entity_rows']} rows, {labels[how]}: {fmt(join['seconds'])}, "
            f"peak {fmt(join['peak_rss_gb'], 'GB')}; {join['seconds']['median'] / max(floor, 1e-6):.2f}x the floor"
        )
    for goal in result["goals"]:
        lines.append(
            f"- goal {goal['goal']}: {goal['value']} — {'met' if goal['met'] else 'MISSED'}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100k,1m", help=f"comma-separated: {', '.join(SIZES)}")
    parser.add_argument("--child", choices=["direct", "champion", *JOINS], help=argparse.SUPPRESS)
    parser.add_argument(
        "--check", action="store_true", help="check the sizes and free memory, run nothing"
    )
    parser.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="measure only this part (repeatable); writes retrain-<size>.partial.json",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=REPEATS,
        help=f"runs of each part (default {REPEATS}; other values write a partial result)",
    )
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--as-of", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        home, as_of = Path(args.home), datetime.fromisoformat(args.as_of)
        if args.child in ("direct", "champion"):
            run = run_tasks(home, as_of, f"{args.child}-{int(time.time())}")
        else:
            run = join_once(home, as_of, args.child)
        print("RESULT " + json.dumps(run))
        return

    sizes = parse_sizes(args.sizes)
    for size in sizes:  # before anything runs: every size must fit
        check_memory(size, ("generate", "retrain", "join_plugin", "join_floor"))
    if args.check:
        return
    root = Path(os.environ.get("DRIFTLINE_HOME", REPO / ".local")).resolve() / "bench"
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = tuple(p for p in PARTS if p in (args.only or PARTS))
    partial = parts != PARTS or args.repeats != REPEATS
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: at least 1")
    missed = []
    for size in sizes:
        path = out_dir / f"retrain-{size}{'.partial' if partial else ''}.json"

        def save(result: dict[str, Any], path: Path = path) -> None:
            path.write_text(json.dumps(result, indent=2) + "\n")

        result = measure(size, root, save, parts=parts, repeats=args.repeats)
        save(result)
        if partial:
            print(json.dumps({k: result[k] for k in ("direct", "dag", "join") if k in result}))
        else:
            print(report(result), flush=True)
        print(f"\nwritten: {path.relative_to(REPO)}", flush=True)
        missed += [f"{size}: {g['goal']} ({g['value']})" for g in result["goals"] if not g["met"]]
    if missed:
        print("\ngoals missed:\n  " + "\n  ".join(missed), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
