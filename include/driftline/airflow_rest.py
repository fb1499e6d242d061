"""The Airflow REST calls that `make demo` and `driftline simulate` make against a running
stack, as an operator's script would: trigger a DAG run, wait until it has finished, read its
task states and the DAG's runs.

Errors are the caller's kind (``error``): the demo reports a failed step, simulate an
unavailable stack. A 401 fetches a fresh token and a 5xx (a busy SQLite metadata database
answers 500 and has done nothing) is retried, so a long drive does not end on either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftline.errors import DriftlineError, Unavailable

if TYPE_CHECKING:
    from driftline.stack import Stack

ATTEMPTS = 4


@dataclass
class AirflowRest:
    """One stack's REST API, as user ``admin``."""

    stack: Stack
    error: type[DriftlineError] = Unavailable
    timeout: float = 1200  # the default wait for a run, in seconds
    poll_seconds: float = 2
    token: str = ""

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded answer of a JSON request; ``error`` when it is not a success."""
        status, answer = 0, None
        for attempt in range(ATTEMPTS):
            try:
                status, answer = self.stack.api(method, path, body, token=self.token)
            except OSError as exc:
                raise self.error(f"the Airflow API at {self.stack.url} failed: {exc}") from None
            if status == 401:
                self.token = self.stack.token("admin")
                continue
            if status < 500:
                break
            time.sleep(3 * (attempt + 1))
        if status >= 300:
            raise self.error(f"{method} {path} answered {status}: {answer}")
        return answer

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Start a run of ``dag_id`` now with ``conf``; its run id."""
        run = self.api(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}
        )
        return run["dag_run_id"]

    def wait(self, what: str, probe: Callable[[], Any], timeout: float | None = None) -> Any:
        """The first truthy value of ``probe``, polled until ``timeout`` (default ``self.timeout``)."""
        limit = timeout or self.timeout
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(self.poll_seconds)
        raise self.error(f"timed out after {limit:.0f} s waiting for {what}")

    def finished(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The run, once its state is ``success`` or ``failed``."""

        def probe() -> dict[str, Any] | None:
            run = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in ("success", "failed") else None

        return self.wait(f"{dag_id} run {run_id}", probe)

    def tasks(self, dag_id: str, run_id: str) -> dict[str, str]:
        """Task id -> state of one run."""
        body = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's latest 100 runs, newest first."""
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=-run_after")[
            "dag_runs"
        ]

    def new_run(
        self,
        dag_id: str,
        known: set[str],
        run_type: str,
        *,
        what: str = "",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Wait for a run of ``dag_id`` of ``run_type`` whose id is not in ``known``."""
        return self.wait(
            what or f"a new {run_type} run of {dag_id}",
            lambda: next(
                (
                    r
                    for r in self.runs(dag_id)
                    if r["dag_run_id"] not in known and r["run_type"] == run_type
                ),
                None,
            ),
            timeout=timeout,
        )


def generated_world(offline_dir: Path) -> dict[str, int]:
    """The generator's world (seed, cards, merchants) that made the offline store, so that
    days appended to it belong to the same population; the generator's defaults if unknown."""
    from driftline import offline

    manifest = offline.read_manifest(offline_dir) or {}
    return {
        "seed": manifest.get("seed", 42),
        "n_cards": manifest.get("cards", 2000),
        "n_merchants": manifest.get("merchants", 300),
    }
