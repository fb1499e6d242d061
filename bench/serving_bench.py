"""Benchmark of the scoring service: part of `make bench` (alone: `make bench-serving`).

Builds a world once (cached under $DRIFTLINE_HOME/bench/serving: 50 generated days, a
champion from a full retrain, the newest day materialized into the SQLite online store),
starts `driftline serve` the way `make up` does (the stack's ``serve`` component, one
worker, SQLite online reads), then, REPEATS times:

* single — open-loop load: one scoring request every 1/RATE s for SECONDS s, each sent at
  its scheduled time whether or not earlier ones were answered; latency from the scheduled
  send to the answer (a stalled service is charged for the requests queued behind it);
  errors; CPU seconds the service process used meanwhile;
* batch  — BATCHES requests of 1,000 rows each, one after another;

and, in this process, the floors: XGBoost's predict alone on a prepared one-row input,
the feature row built and scored (``training.predict``: the service's path without HTTP
and Feast), and Feast's online read alone for one entity row.

Prints a table (min / median / max over the repeats), writes bench/results/serving.json with
a description of the machine, and exits 1 when a goal is missed: p99 <= 25 ms single,
<= 100 ms for a 1,000-row batch (medians over the repeats).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "fraud_detection"
WORLD = {"n_cards": 2000, "n_merchants": 300, "seed": 11}
START, DAYS, AS_OF = "2025-12-22", 50, datetime(2026, 2, 10, tzinfo=UTC)
GOALS = {"single_p99_ms": 25.0, "batch_1000_p50_ms": 100.0}
FEATURES = ["amount", "hour", "distance_from_home_km", "merchant_category", "channel"]


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def machine() -> dict[str, Any]:
    import psutil

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def prepare(home: Path) -> None:
    """The world, a champion and the online store; reused when already built."""
    from driftline import offline, registry, retrain
    from driftline.datagen import generate
    from driftline.feature_store import apply_repo, materialize_window
    from driftline.lineage import RunContext
    from driftline.settings import get_settings

    settings = get_settings()
    if registry.alias_version(MODEL, registry.CHAMPION) is not None:
        return
    print(f"building the bench world in {home} (once) ...", flush=True)
    if not offline.list_days(settings.offline_dir):
        generate(offline_dir=settings.offline_dir, days=DAYS, start=START, **WORLD)
    apply_repo()
    retrain.run_all(MODEL, as_of=AS_OF, context=RunContext(run_id="bench"))
    newest = offline.list_days(settings.offline_dir)[-1]
    start = datetime(newest.year, newest.month, newest.day, tzinfo=UTC)
    materialize_window(start, start + timedelta(days=1))


def requests(count: int) -> list[dict[str, Any]]:
    """Rows of the newest day, asked at the materialization end (every feature present)."""
    from driftline import offline
    from driftline.settings import get_settings

    settings = get_settings()
    newest = offline.list_days(settings.offline_dir)[-1]
    frame = offline.read_table(settings.offline_dir, "transactions", [newest]).to_pandas()
    at = (
        datetime(newest.year, newest.month, newest.day, tzinfo=UTC) + timedelta(days=1)
    ).isoformat()
    rows = []
    for row in frame.head(count).itertuples():
        rows.append(
            {
                "card_id": int(row.card_id),
                "merchant_id": int(row.merchant_id),
                "amount": float(row.amount),
                "hour": int(row.hour),
                "distance_from_home_km": float(row.distance_from_home_km),
                "merchant_category": str(row.merchant_category),
                "channel": str(row.channel),
                "transaction_id": str(row.transaction_id),
                "event_timestamp": at,
            }
        )
    return rows


def floors(rows: list[dict[str, Any]], calls: int = 2000) -> dict[str, Any]:
    """Per-call latency of the parts the service cannot avoid, measured in this process."""
    import threading

    from driftline import registry, training
    from driftline.feature_store import get_store
    from driftline.serving.features import OnlineFeatures
    from driftline.specs import load_spec

    spec = load_spec(MODEL)
    store = get_store()
    store.refresh_registry()
    features = OnlineFeatures(spec, store, threading.Lock())
    booster = registry.load_booster(MODEL, registry.alias_version(MODEL, registry.CHAMPION))
    booster.set_param({"nthread": 1})
    row = dict(rows[0], event_timestamp=datetime.fromisoformat(rows[0]["event_timestamp"]))
    frame = features.read([row], datetime.now(UTC)).columns
    inputs = training.model_inputs(frame, spec, list(booster.feature_names)).values
    entity = [{"card_id": row["card_id"], "merchant_id": row["merchant_id"]}]

    def timed(call: Any) -> dict[str, float]:
        call()
        samples = []
        for _ in range(calls):
            begin = time.perf_counter()
            call()
            samples.append((time.perf_counter() - begin) * 1000)
        return {
            "p50_ms": round(_percentile(samples, 0.5), 3),
            "p99_ms": round(_percentile(samples, 0.99), 3),
        }

    return {
        "xgboost_predict": timed(lambda: booster.inplace_predict(inputs)),
        "feature_row_and_predict": timed(lambda: training.predict(booster, frame, spec)),
        "feast_online_read": timed(
            lambda: store.get_online_features(features=features.service, entity_rows=entity)
        ),
    }


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a load generator that costs far
    less CPU than a full client, so the 2 cores go to the service being measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return status, await self.reader.readexactly(length)


async def open_loop(url: str, rows: list[dict[str, Any]], rate: float, seconds: float) -> dict:
    """Requests leave on schedule (``rate`` per second) over a pool of connections; latency
    runs from the scheduled time, so a request waiting for a free connection counts too."""
    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps(row).encode() for row in rows]
    path = f"/v1/models/{MODEL}/score"
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await Connection.open(host, int(port)))
    latencies: list[float] = []
    errors: list[str] = []

    async def one(index: int, due: float) -> None:
        connection = await pool.get()
        try:
            status, body = await connection.post(path, bodies[index % len(bodies)])
            if status != 200:
                errors.append(f"{status} {body[:200]!r}")
            pool.put_nowait(connection)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors.append(repr(exc))
            pool.put_nowait(await Connection.open(host, int(port)))
        latencies.append((time.perf_counter() - due) * 1000)

    tasks = []
    begin = time.perf_counter()
    for index in range(int(rate * seconds)):
        due = begin + index / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(index, due)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().writer.close()
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "p50_ms": round(_percentile(latencies, 0.5), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
    }


def batches(url: str, rows: list[dict[str, Any]], count: int) -> dict[str, float]:
    import httpx

    body = {"rows": (rows * (1000 // len(rows) + 1))[:1000]}
    samples = []
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post(f"/v1/models/{MODEL}/score/batch", json=body).raise_for_status()
        for _ in range(count):
            begin = time.perf_counter()
            client.post(f"/v1/models/{MODEL}/score/batch", json=body).raise_for_status()
            samples.append((time.perf_counter() - begin) * 1000)
    return {
        "p50_ms": round(_percentile(samples, 0.5), 2),
        "max_ms": round(max(samples), 2),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each load run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20, help="1,000-row requests per repeat")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "serving.json"))
    args = parser.parse_args()

    import psutil

    root = Path(os.environ.get("DRIFTLINE_HOME", REPO / ".local")).resolve()
    home = root / "bench" / "serving"
    home.mkdir(parents=True, exist_ok=True)
    for key in [k for k in os.environ if k.startswith(("DRIFTLINE_", "MLFLOW_", "AIRFLOW"))]:
        del os.environ[key]
    os.environ["DRIFTLINE_HOME"] = str(home)
    from driftline.settings import get_settings
    from driftline.stack import SERVE, Stack, free_port

    result: dict[str, Any] = {"machine": machine(), "measured_at": datetime.now(UTC).isoformat()}
    prepare(home)
    rows = requests(500)
    print("floors (in-process, 2,000 calls each) ...", flush=True)
    result["floors"] = floors(rows)

    stack = Stack(settings=get_settings(), port=free_port(), serve_port=free_port())
    stack.start((SERVE,))
    try:
        stack.wait_serving(timeout=300)
        service = psutil.Process(stack.recorded()["processes"][SERVE])
        runs = []
        for repeat in range(1, args.repeats + 1):
            print(
                f"repeat {repeat}: {args.rate:.0f} req/s for {args.seconds:.0f} s ...", flush=True
            )
            cpu = service.cpu_times()
            single = asyncio.run(open_loop(stack.serve_url or "", rows, args.rate, args.seconds))
            after = service.cpu_times()
            single["service_cpu_seconds"] = round(
                (after.user + after.system) - (cpu.user + cpu.system), 2
            )
            runs.append(
                {"single": single, "batch_1000": batches(stack.serve_url or "", rows, args.batches)}
            )
            print(f"  {runs[-1]}", flush=True)
    finally:
        stack.stop()

    result["config"] = {
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "batches": args.batches,
        "workers": 1,
        "online_store": "sqlite",
        "world": WORLD,
    }
    result["runs"] = runs
    summary = {
        "single_p50_ms": _spread([r["single"]["p50_ms"] for r in runs]),
        "single_p99_ms": _spread([r["single"]["p99_ms"] for r in runs]),
        "single_errors": _spread([r["single"]["errors"] for r in runs]),
        "service_cpu_seconds": _spread([r["single"]["service_cpu_seconds"] for r in runs]),
        "batch_1000_p50_ms": _spread([r["batch_1000"]["p50_ms"] for r in runs]),
    }
    result["summary"] = summary
    missed = [
        f"{name} median {summary[name]['median']} > {goal}"
        for name, goal in GOALS.items()
        if summary[name]["median"] > goal
    ]
    if any(r["single"]["errors"] for r in runs):
        missed.append("errors under load")
    result["goals"] = {name: f"<= {goal}" for name, goal in GOALS.items()}
    result["goals_met"] = not missed
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\n## scoring service, {args.rate:.0f} req/s open loop, {args.repeats} repeats (min / median / max)\n"
    )
    print("| measure | min | median | max |\n|---|---|---|---|")
    for name, spread in summary.items():
        print(f"| {name} | {spread['min']} | {spread['median']} | {spread['max']} |")
    print("\nfloors (p50 / p99 ms):")
    for name, value in result["floors"].items():
        print(f"  {name:26} {value['p50_ms']} / {value['p99_ms']}")
    print(f"\nwritten to {args.out}")
    if missed:
        print("GOALS MISSED: " + "; ".join(missed))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
