"""The scoring service: ``driftline serve`` (FastAPI on uvicorn) in front of the MLflow
registry and the Feast online store.

* :mod:`~driftline.serving.features` — the request schema generated from the model's spec,
  the Feast online read, and the feature row (scored by :func:`driftline.training.predict`
  through :func:`driftline.training.model_inputs`, the code training and evaluation use:
  training-serving parity).
* :mod:`~driftline.serving.models` — the versions the aliases point at, reloaded off the
  request path when an alias moves and swapped atomically.
* :mod:`~driftline.serving.routing` — the canary contract: which arm a request goes to.
* :mod:`~driftline.serving.metrics` — Prometheus metrics (multiprocess-safe).
* :mod:`~driftline.serving.app` — the HTTP endpoints and ``run`` (what the CLI calls).

Invariants: a request reads one immutable snapshot of the loaded models, so it is scored by
exactly the versions it reports; nothing on the request path touches the registry or the
disk (the prediction log is written by a background thread); a version that fails to load
never replaces the one serving.
"""
