"""driftline's errors, by kind: what the caller should do differs with the kind.

* ``InvalidInput`` — bad data or bad configuration. Retrying cannot help: fail now, name the
  check, the value and where it came from. CLI exit code 2.
* ``Unavailable`` — a service (MLflow, the monitoring store, Feast's registry, a webhook)
  could not be reached or answered with an error. Retrying may help: Airflow retries the task.
  CLI exit code 3.
* ``Conflict`` — the state moved under us (a compare-and-set lost, an operation already in
  flight). Re-reading the state decides what to do. CLI exit code 4.

``DriftlineError`` is the base; raised bare it means bad input (the kind older code meant).
"""

from __future__ import annotations


class DriftlineError(Exception):
    """A failure described for a human: what, which value, where it came from."""

    kind = "invalid"
    exit_code = 2
    retryable = False


class InvalidInput(DriftlineError, ValueError):
    """Bad data or bad configuration: fail, do not retry."""


class Unavailable(DriftlineError):
    """A service could not be reached or failed: retry."""

    kind = "unavailable"
    exit_code = 3
    retryable = True


class Conflict(DriftlineError):
    """The state moved under the operation (a compare-and-set lost): re-read, then decide."""

    kind = "conflict"
    exit_code = 4
