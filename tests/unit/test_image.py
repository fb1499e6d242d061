"""The Dockerfile, checked without a Docker engine: hadolint, and every Python package from
the hashed lock. Each check is also shown to fail on a Dockerfile that breaks it."""

from __future__ import annotations

from pathlib import Path

from driftline.image_check import dockerfile_problems, hadolint, locked_versions
from driftline.settings import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
LOCK = REPO_ROOT / "requirements.lock"


def test_the_dockerfile_passes_hadolint_with_no_finding() -> None:
    assert hadolint(DOCKERFILE) == (0, "")


def test_hadolint_finds_an_unpinned_install_and_a_root_user(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        DOCKERFILE.read_text()
        + "USER root\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n"
    )
    code, findings = hadolint(broken)
    assert code == 1
    for rule in ("DL3008", "DL3009", "DL3013", "DL3015", "DL3042", "DL3002"):
        assert rule in findings, (rule, findings)


def test_every_python_package_of_the_image_comes_from_the_lock() -> None:
    assert dockerfile_problems(DOCKERFILE, LOCK) == []
    assert locked_versions(LOCK)["apache-airflow"] in DOCKERFILE.read_text()


def test_installs_outside_the_lock_are_named(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        text.replace("apache/airflow:3.3.2-", "apache/airflow:3.2.0-")
        .replace("--require-hashes ", "")
        .replace("--no-deps -e .", "-e .")
        + "RUN pip install --no-cache-dir requests==2.0.0 xgboost\n"
    )
    found = dockerfile_problems(broken, LOCK)
    locked = locked_versions(LOCK)
    assert found == [
        f"base image has Airflow 3.2.0, the lock pins {locked['apache-airflow']}",
        "`pip install --system --no-cache -r requirements.lock` does not pass --require-hashes",
        "`pip install --system --no-cache -e .` installs the project with its deps",
        f"`requests==2.0.0` in `pip install --no-cache-dir requests==2.0.0 xgboost` is not the "
        f"lock's (requests=={locked['requests']})",
        "`xgboost` in `pip install --no-cache-dir requests==2.0.0 xgboost` is not the lock's "
        f"(xgboost=={locked['xgboost']})",
    ]
