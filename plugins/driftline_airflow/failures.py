"""How a driftline error's kind becomes an Airflow task outcome, in one place.

Bad data, bad configuration and a lost compare-and-set fail the task at once
(``AirflowFailException``: retrying cannot help, and the message is the reason). An
unavailable service (MLflow, the monitoring store, Feast's registry) and a promotion still
in flight propagate, so Airflow retries the task (``default_args``: 2 retries, 30 s apart).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowFailException

from driftline.errors import DriftlineError


@contextmanager
def by_kind() -> Iterator[None]:
    """Run a task body; fail now on errors retrying cannot mend, let Airflow retry the rest."""
    try:
        yield
    except DriftlineError as failed:
        if failed.retryable:
            raise
        raise AirflowFailException(str(failed)) from None
