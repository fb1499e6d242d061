"""``training.engine: dask`` on a real ``dask.distributed`` cluster of two worker processes
(started here, stopped at the module's end whatever the tests did), a real Feast store and a
real MLflow registry in a temp directory.

Equal data and seed give a model within the tolerances below of the local engine's, on the
same holdout. Measured on the 21-day baseline world (7,820 training rows; holdout 2,194 rows,
43 positives), dask minus local: PR-AUC -0.013, ROC-AUC +0.004, mean |score difference|
0.0023, Spearman rank correlation of the scores 0.95; the tolerances are about twice that.
The gap grows as the training set shrinks (7 training days of this world, ~3,900 rows:
PR-AUC -0.059, Spearman 0.83), so the comparison uses the larger set. Two workers
are not bit-identical to one process: each worker sketches the quantile bins of its own time
slice and the sketches are merged (the local engine cuts bins from all rows at once),
histograms are summed across workers in another order, and ``subsample: 0.9`` draws rows per
worker — so early stopping may also pick another iteration. On one worker the same data path
gives bit-identical scores (measured).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import spearmanr

from driftline import registry, retrain
from driftline.datagen import generate
from driftline.errors import Unavailable
from driftline.feature_store import apply_repo
from driftline.lineage import RunContext
from driftline.settings import REPO_ROOT
from driftline.specs import ModelSpec, load_spec
from driftline.training import fit, metrics, predict, time_split
from driftline.training_dask import fit_dask
from driftline.training_set import TRAINING_FILE, Window, read_fingerprint
from tests.conftest import SMALL, isolate_environment
from tests.frames import joined, window_of

MODEL = "fraud_detection"
AS_OF = datetime(2026, 2, 10, tzinfo=UTC)
# a two-week window, 2026-01-20 .. 2026-02-02 (labels mature 7 days before AS_OF), after the
# world's warm-up week (merchants have no matured labels before its day 8): data 01-08 .. 02-09
WINDOW_DAYS = 14
WORLD_START, WORLD_DAYS = "2026-01-08", 33
# dask engine against local engine, same rows and seed (measured values in the docstring)
MAX_PR_AUC_DIFFERENCE = 0.03
MAX_ROC_AUC_DIFFERENCE = 0.01
MAX_MEAN_SCORE_DIFFERENCE = 0.005
MIN_SCORE_RANK_CORRELATION = 0.9


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """Two worker processes, one thread each, on this machine; closed even when a test fails."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        dashboard_address=None,
        memory_limit="1.5GiB",
    ) as cluster:
        yield cluster.scheduler_address


def _dask_spec(models_dir: Path, address: str, **dask: object) -> None:
    """The shipped spec, trained on Dask at ``address``."""
    raw = yaml.safe_load((REPO_ROOT / "include" / "models" / f"{MODEL}.yaml").read_text())
    raw["training"] = {
        **raw["training"],
        "engine": "dask",
        "dask": {"scheduler_address": address, **dask},
    }
    models_dir.mkdir(parents=True, exist_ok=True)
    (models_dir / f"{MODEL}.yaml").write_text(yaml.safe_dump(raw))


@dataclass(frozen=True)
class Trained:
    home: Path
    run_dir: Path
    spec: ModelSpec
    result: dict


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, scheduler: str) -> Iterator[Trained]:
    """The retrain's build, validate and train stages with ``training.engine: dask``."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("dask") / "state"
        home.mkdir()
        isolate_environment(patch, home)
        patch.setenv("DRIFTLINE_MODELS_DIR", str(home / "models"))
        _dask_spec(home / "models", scheduler)
        generate(offline_dir=home / "offline", days=WORLD_DAYS, start=WORLD_START, **SMALL)
        apply_repo()
        context = RunContext(run_id="dask-train")
        built = retrain.build(MODEL, as_of=AS_OF, context=context, window_days=WINDOW_DAYS)
        directory = built["run_dir"]
        retrain.validate(MODEL, directory, context=context)
        result = retrain.train(MODEL, directory, context=context)
        yield Trained(home, Path(directory), load_spec(MODEL), result)


def test_train_stage_on_dask_registers_an_xgboost_version(trained: Trained) -> None:
    import mlflow
    import xgboost as xgb

    assert trained.result["version"] == "1" and not trained.result["reused"]
    assert registry.alias_version(MODEL, registry.CHALLENGER) == "1"
    info = registry.version_info(MODEL, "1")
    assert info.tags["training_engine"] == "dask"
    uri = f"models:/{MODEL}/1"
    assert "xgboost" in mlflow.models.get_model_info(uri).flavors
    booster = mlflow.xgboost.load_model(uri)
    assert isinstance(booster, xgb.Booster)
    # the registered model is the one the stage scored: its holdout metrics reproduce
    fingerprint = read_fingerprint(trained.run_dir)
    window = Window(**{k: datetime.fromisoformat(v) for k, v in fingerprint.window.items()})
    split = time_split(pd.read_parquet(trained.run_dir / TRAINING_FILE), trained.spec, window)
    rescored = metrics(
        split.holdout[trained.spec.label].to_numpy(),
        predict(booster, split.holdout, trained.spec),
        trained.spec.training.target_fpr,
    )
    for name, value in rescored.items():
        assert float(info.tags[f"holdout_{name}"]) == pytest.approx(value, abs=1e-6), name


def test_dask_model_is_within_tolerance_of_the_local_one(
    baseline_offline: Path, scheduler: str, tmp_path: Path
) -> None:
    _dask_spec(tmp_path, scheduler)
    spec = load_spec(MODEL, tmp_path)
    frame = joined(baseline_offline)
    split = time_split(frame, spec, window_of(spec, frame))
    labels = split.holdout[spec.label].to_numpy()
    local = predict(fit(spec, split), split.holdout, spec)
    distributed = predict(fit_dask(spec, split), split.holdout, spec)
    local_metrics = metrics(labels, local, spec.training.target_fpr)
    dask_metrics = metrics(labels, distributed, spec.training.target_fpr)
    differences = {
        "pr_auc": dask_metrics["pr_auc"] - local_metrics["pr_auc"],
        "roc_auc": dask_metrics["roc_auc"] - local_metrics["roc_auc"],
        "mean_abs_score": float(np.abs(distributed - local).mean()),
        "spearman": float(spearmanr(local, distributed).statistic),
    }
    print(
        f"dask - local, {len(split.train)} training rows, {len(labels)} holdout rows "
        f"({labels.sum()} positives): {differences}"
    )
    assert abs(differences["pr_auc"]) <= MAX_PR_AUC_DIFFERENCE, differences
    assert abs(differences["roc_auc"]) <= MAX_ROC_AUC_DIFFERENCE, differences
    assert differences["mean_abs_score"] <= MAX_MEAN_SCORE_DIFFERENCE, differences
    assert differences["spearman"] >= MIN_SCORE_RANK_CORRELATION, differences
    # and the dask engine repeats itself: same cluster, data and seed, same scores
    np.testing.assert_array_equal(distributed, predict(fit_dask(spec, split), split.holdout, spec))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_scheduler_fails_the_task_for_a_retry_naming_it(
    trained: Trained, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from driftline_airflow.failures import by_kind

    isolate_environment(monkeypatch, trained.home)
    monkeypatch.setenv("DRIFTLINE_MODELS_DIR", str(tmp_path / "models"))
    _dask_spec(tmp_path / "models", "tcp://127.0.0.1:8786", connect_timeout_seconds=2)
    # the deployment's variable overrides the spec's address
    address = f"tcp://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("DRIFTLINE_DASK_SCHEDULER", address)
    started = time.monotonic()
    with pytest.raises(Unavailable) as failed, by_kind():
        retrain.train(MODEL, str(trained.run_dir), context=RunContext(run_id="dask-down"))
    elapsed = time.monotonic() - started
    message = str(failed.value)
    assert address in message and "DRIFTLINE_DASK_SCHEDULER" in message, message
    assert "did not answer within 2 s" in message, message
    assert not isinstance(failed.value, AirflowFailException) and failed.value.retryable
    assert elapsed < 20, f"failing took {elapsed:.1f} s with a 2 s connect timeout"
    assert registry.find_version_by_tag(MODEL, "run_key", "cli/dask-down") is None
