"""Who or what started a run: carried from Airflow (or the CLI) into tags and audit rows."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunContext:
    """The orchestration facts every recorded decision carries."""

    dag_id: str = "cli"
    run_id: str = "manual"
    run_type: str = "manual"
    triggered_by: str = "cli"
    reason: str = ""
    dry_run: bool = False

    @property
    def key(self) -> str:
        """Identifies the run across task retries: how re-runs find what they made before."""
        return f"{self.dag_id}/{self.run_id}"

    def tags(self) -> dict[str, str]:
        return {
            "airflow_dag_id": self.dag_id,
            "airflow_run_id": self.run_id,
            "airflow_run_type": self.run_type,
            "triggered_by": self.triggered_by,
            "run_key": self.key,
            "reason": self.reason,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_dir(runs_root: Path, model: str, context: RunContext) -> Path:
    """The per-run artifact directory: stable for a run, distinct between runs."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{context.dag_id}__{context.run_id}")
    return runs_root / model / safe
