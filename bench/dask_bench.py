"""Benchmark of ``training.engine: dask`` beside the local engine, on the same training set.

For a size of ``bench/retrain_bench.py`` (its world, cached under
$DRIFTLINE_HOME/bench/<size>, is generated the same way and shared), it builds the training
set once through the real build stage (Feast), then fits the shipped spec's model with:

* local — ``training.fit``: one process, the spec's ``nthread`` (2);
* local, 1 thread — the same with ``nthread: 1``: on a loaded machine two OpenMP threads
          wait on each other, and this separates that cost from what Dask itself changes;
* dask  — ``training_dask.fit_dask`` on a ``LocalCluster`` of 2 worker processes × 1 thread
          started here (or on ``--scheduler tcp://host:port``).

Both fits see the same rows, parameters and seed. Each engine is warmed up once on a small
slice (imports, worker start), then timed ``--repeats`` times; the median, min and max are
reported with the holdout metrics of both models and the machine's load average. Two local
workers share this machine's cores: the figure measures xgboost.dask's overhead on one
machine, not a cluster's speed-up. Writes bench/results/dask-<size>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.retrain_bench import MODEL, SIZES, as_of_times, prepare  # noqa: E402
from bench.rss import PeakRSS  # noqa: E402
from driftline.specs import ModelSpec  # noqa: E402

# the training set's scored columns and the fits, GB = base + per million labeled rows:
# measured 1M rows at 3.0 GB with 2 workers (bench/results/dask-1m.json)
NEEDS_GB = (1.5, 1.2)
WARMUP_ROWS = 20_000


def _training_set(home: Path, as_of: datetime) -> Path:
    """The run directory of one build stage (kept: later runs of this size reuse it)."""
    from driftline import retrain
    from driftline.lineage import RunContext, run_dir
    from driftline.settings import get_settings
    from driftline.training_set import TRAINING_FILE

    context = RunContext(dag_id="bench-dask", run_id="training-set", triggered_by="bench")
    directory = run_dir(get_settings().runs_dir, MODEL, context)
    if not (directory / TRAINING_FILE).exists():
        retrain.build(MODEL, as_of=as_of, context=context)
    return directory


def _timed(fit: object, repeats: int, sampler: PeakRSS) -> tuple[list[float], float, object]:
    seconds, booster = [], None
    sampler.reset()
    for _ in range(repeats):
        started = time.perf_counter()
        booster = fit()  # type: ignore[operator]
        seconds.append(round(time.perf_counter() - started, 2))
    return seconds, round(sampler.peak / 1e9, 2), booster


def _summary(seconds: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds)}


def _with(spec: ModelSpec, **training: object) -> ModelSpec:
    raw = spec.model_dump()
    raw["training"].update(training)
    return type(spec).model_validate(raw)


def measure(size: str, repeats: int, scheduler: str | None) -> dict:
    from driftline.settings import get_settings
    from driftline.specs import load_spec
    from driftline.training import fit, metrics, predict, read_training_set, time_split
    from driftline.training_dask import fit_dask
    from driftline.training_set import Window, read_fingerprint

    root = Path(os.environ.get("DRIFTLINE_HOME", REPO / ".local")).resolve() / "bench"
    home = root / size
    os.environ["DRIFTLINE_HOME"] = str(home)  # prepare sets it only when it generates
    prepare(size, home)
    as_of = as_of_times()[1]  # the measured retrains' as-of: the same training set
    directory = _training_set(home, as_of)
    spec = load_spec(MODEL, get_settings().models_dir)
    fingerprint = read_fingerprint(directory)
    window = Window(**{k: datetime.fromisoformat(v) for k, v in fingerprint.window.items()})
    split = time_split(read_training_set(directory, spec), spec, window)
    warmup = type(split)(
        split.train.tail(WARMUP_ROWS),
        split.validation.tail(WARMUP_ROWS // 4),
        split.holdout,
        split.validation_start,
        split.holdout_start,
    )
    load_before = os.getloadavg()
    result: dict = {
        "size": size,
        "labeled_rows": fingerprint.rows,
        "rows": {"train": len(split.train), "validation": len(split.validation)},
        "holdout_rows": len(split.holdout),
        "holdout_positives": int(split.holdout[spec.label].sum()),
        "repeats": repeats,
    }
    labels = split.holdout[spec.label].to_numpy()
    with PeakRSS(os.getpid()) as sampler:
        fit(spec, warmup)
        seconds, peak, booster = _timed(lambda: fit(spec, split), repeats, sampler)
        local_scores = predict(booster, split.holdout, spec)
        result["local"] = {
            "seconds": seconds,
            **_summary(seconds),
            "peak_rss_gb": peak,
            "best_iteration": int(booster.attr("best_iteration")),
            "holdout": metrics(labels, local_scores, spec.training.target_fpr),
        }
        one_thread = _with(spec, params={**spec.training.params, "nthread": 1})
        fit(one_thread, warmup)
        seconds, peak, booster = _timed(lambda: fit(one_thread, split), repeats, sampler)
        result["local_1_thread"] = {
            "seconds": seconds,
            **_summary(seconds),
            "peak_rss_gb": peak,
            "best_iteration": int(booster.attr("best_iteration")),
        }
        cluster = None
        started = time.perf_counter()
        if scheduler is None:
            from distributed import LocalCluster

            cluster = LocalCluster(
                n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
            )
            scheduler = cluster.scheduler_address
        try:
            cluster_start = round(time.perf_counter() - started, 2)
            dask_spec = _with(spec, engine="dask", dask={"scheduler_address": scheduler})
            fit_dask(dask_spec, warmup)
            seconds, peak, booster = _timed(lambda: fit_dask(dask_spec, split), repeats, sampler)
            dask_scores = predict(booster, split.holdout, spec)
            result["dask"] = {
                "workers": "2 local processes x 1 thread" if cluster else scheduler,
                "cluster_start_s": cluster_start if cluster else None,
                "seconds": seconds,
                **_summary(seconds),
                "peak_rss_gb": peak,
                "best_iteration": int(booster.attr("best_iteration")),
                "holdout": metrics(labels, dask_scores, spec.training.target_fpr),
            }
        finally:
            if cluster is not None:
                cluster.close()
    result["dask_minus_local"] = {
        name: round(result["dask"]["holdout"][name] - result["local"]["holdout"][name], 5)
        for name in ("pr_auc", "roc_auc")
    }
    result["dask_minus_local"]["mean_abs_score"] = round(
        float(abs(dask_scores - local_scores).mean()), 5
    )
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1m", help=f"one of {', '.join(SIZES)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scheduler", help="tcp://host:port of a running Dask scheduler")
    args = parser.parse_args()
    if args.size not in SIZES:
        raise SystemExit(f"--size {args.size!r} is unknown; allowed: {', '.join(SIZES)}")
    needed = NEEDS_GB[0] + NEEDS_GB[1] * SIZES[args.size] / 1e6
    available = psutil.virtual_memory().available / 1e9
    if available < needed:
        raise SystemExit(
            f"--size {args.size} needs about {needed:.1f} GB of free memory; "
            f"{available:.1f} GB is available"
        )
    result = {
        **measure(args.size, args.repeats, args.scheduler),
        "measured_at": datetime.now(UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "python": platform.python_version(),
        },
    }
    out = REPO / "bench" / "results" / f"dask-{args.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    runs = ", ".join(
        f"{name} {result[name]['median_s']} s ({result[name]['min_s']}-{result[name]['max_s']})"
        for name in ("local", "local_1_thread", "dask")
    )
    print(
        f"[{args.size}] {result['rows']['train']:,} training rows; fit median (min-max) of "
        f"{args.repeats}: {runs}; "
        f"dask - local {result['dask_minus_local']}; load {result['load_average']}; {out}"
    )


if __name__ == "__main__":
    main()
