"""``training.engine: dask``: the same XGBoost fit, on a Dask cluster with ``xgboost.dask``.

Only the fit moves. The caller (``training.train``) splits by time, scores the holdout and
registers the model exactly as for the local engine; this module receives that split and
returns a plain ``xgboost.Booster`` cut to its best iteration, as ``training.fit`` does.

Invariants:

* Same inputs as the local engine: the rows of ``split.train`` and ``split.validation``
  through ``training.model_inputs`` (the spec's columns and fixed categories), the spec's
  parameters and seed, early stopping on the validation days — except ``nthread`` /
  ``n_jobs``, which size the local process: each worker uses its own threads.
* The data reaches the workers by ``Client.scatter``, one contiguous time slice per worker,
  straight from this process: the workers need xgboost and pandas, not driftline, not the
  offline store and not the run directory.
* The scheduler address comes from ``DRIFTLINE_DASK_SCHEDULER`` when set, else from the
  spec's ``training.dask.scheduler_address``; a malformed one is ``InvalidInput`` naming its
  source. A scheduler that does not answer within ``training.dask.connect_timeout_seconds``
  (or has no worker by then), or a connection lost while training, is ``Unavailable`` naming
  the address, so Airflow retries the train task.
* Not bit-identical to the local engine: each worker sketches its own slice's quantiles (the
  bins are merged from the sketches, not cut from all rows), histograms are summed across
  workers in another order, and ``subsample`` draws rows per worker. The difference is
  measured by ``tests/integration/test_training_dask.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftline.errors import InvalidInput, Unavailable
from driftline.settings import Settings, get_settings
from driftline.specs import DASK_SCHEDULER_ENV, ModelSpec, dask_address_problem
from driftline.training import Split, best_trees, check_trainable, model_inputs, xgb_params

if TYPE_CHECKING:
    from distributed import Client
    from xgboost.dask import DaskDMatrix

log = logging.getLogger(__name__)

LOCAL_ONLY_PARAMS = ("nthread", "n_jobs")


def scheduler_address(spec: ModelSpec, settings: Settings) -> tuple[str, str]:
    """The scheduler to train on and where that address came from."""
    if settings.dask_scheduler:
        address, source = settings.dask_scheduler, DASK_SCHEDULER_ENV
    elif spec.training.dask.scheduler_address:
        address = spec.training.dask.scheduler_address
        source = f"training.dask.scheduler_address in {spec.source or spec.name}"
    else:
        raise InvalidInput(
            f"{spec.name} trains on Dask (training.engine in {spec.source or spec.name}) but "
            f"no scheduler address is set: set training.dask.scheduler_address or "
            f"{DASK_SCHEDULER_ENV}"
        )
    problem = dask_address_problem(address)
    if problem:
        raise InvalidInput(f"{source}: {problem}")
    return address, source


@contextmanager
def connect(address: str, source: str, timeout: float) -> Iterator[Client]:
    """A client of the scheduler at ``address`` with at least one worker; closed on exit."""
    from distributed import Client

    where = f"the Dask scheduler at {address} (from {source})"
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise Unavailable(
            f"{where} did not answer within {timeout:g} s: {exc}; is the scheduler running "
            "and reachable from the Airflow worker?"
        ) from exc
    except Exception as exc:
        # something else answered the handshake: an HTTP server or proxy makes distributed
        # read its status line as a frame length and fail to allocate exabytes (seen here)
        raise Unavailable(
            f"{where} answered, but not as a Dask scheduler ({type(exc).__name__}: "
            f"{str(exc)[:200]}); is the port right?"
        ) from exc
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError as exc:
            raise Unavailable(f"{where} has no worker after {timeout:g} s") from exc
        # xgboost.dask looks the client up (distributed.get_client) even when it is passed;
        # as_current scopes it to this block instead of making it the process's default
        with client.as_current():
            yield client
    finally:
        client.close()


def _matrix(client: Client, spec: ModelSpec, part: pd.DataFrame, workers: int) -> DaskDMatrix:
    """One split as a DaskDMatrix: inputs and label in one frame, one time slice per worker."""
    import dask.dataframe as dd
    from xgboost import dask as dxgb

    inputs = model_inputs(part, spec)
    frame = pd.DataFrame(inputs.values, columns=inputs.names)
    frame[spec.label] = part[spec.label].to_numpy()
    slices = np.array_split(np.arange(len(frame)), min(workers, len(frame)))
    futures = client.scatter([frame.iloc[rows] for rows in slices])
    data = dd.from_delayed(futures, meta=frame.iloc[:0], verify_meta=False)
    # category codes in the spec's fixed lists, typed "c": what training.to_matrix builds
    return dxgb.DaskDMatrix(
        client,
        data[inputs.names],
        data[spec.label],
        feature_names=inputs.names,
        feature_types=inputs.types,
        enable_categorical=True,
    )


def fit_dask(spec: ModelSpec, split: Split, *, settings: Settings | None = None) -> Any:
    """``training.fit`` on the Dask cluster: same parameters, seed and early stopping."""
    from xgboost import dask as dxgb

    check_trainable(spec, split)
    # a worker trains with its own threads: the spec's nthread sizes the local process, and
    # forced onto workers that share cores it oversubscribes them (measured 30x slower)
    params = {k: v for k, v in xgb_params(spec).items() if k not in LOCAL_ONLY_PARAMS}
    address, source = scheduler_address(spec, settings or get_settings())
    with connect(address, source, spec.training.dask.connect_timeout_seconds) as client:
        workers = len(client.nthreads())
        log.info(
            "training %s on the Dask scheduler at %s (%d workers, address from %s)",
            spec.name,
            address,
            workers,
            source,
        )
        try:
            output = dxgb.train(
                client,
                params,
                _matrix(client, spec, split.train, workers),
                num_boost_round=spec.training.num_boost_round,
                evals=[(_matrix(client, spec, split.validation, workers), "validation")],
                early_stopping_rounds=spec.training.early_stopping_rounds,
                verbose_eval=False,
            )
        except OSError as exc:  # distributed's CommClosedError is one: a worker or the
            # scheduler went away mid-training
            raise Unavailable(
                f"lost the Dask cluster at {address} (from {source}) while training: {exc}"
            ) from exc
    return best_trees(output["booster"])
