"""Weak secrets stop the production profile before anything starts, naming the variable.

The start-up test runs the compose file's own secrets-check service natively: its command
and environment as `docker-compose config` resolves them from a given .env.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from driftline.errors import InvalidInput
from driftline.secret_check import (
    SECRETS,
    check_secrets,
    new_env,
    read_env_file,
    weaknesses,
    write_new_env,
)
from driftline.settings import REPO_ROOT
from tests.unit.test_compose import COMPOSE, ENV_EXAMPLE, _compose_or_skip


def _strong(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_text(new_env(ENV_EXAMPLE))
    return path


def _with(path: Path, **changes: str) -> Path:
    lines = [
        f"{line.split('=', 1)[0]}={changes[line.split('=', 1)[0]]}"
        if "=" in line and line.split("=", 1)[0] in changes
        else line
        for line in path.read_text().splitlines()
    ]
    changed = path.with_name("changed.env")
    changed.write_text("\n".join(lines) + "\n")
    return changed


def test_env_example_is_refused_naming_every_placeholder() -> None:
    found = weaknesses(read_env_file(ENV_EXAMPLE), ".env.example")
    assert len(found) == len(SECRETS)
    for name in SECRETS:
        assert any(
            line.startswith(f"check-secrets: {name} is the placeholder 'change-me'")
            for line in found
        ), name
    assert all("(from .env.example)" in line for line in found)


def test_generated_env_holds_and_is_private(tmp_path: Path) -> None:
    target = write_new_env(ENV_EXAMPLE, tmp_path / ".env")
    assert target.stat().st_mode & 0o777 == 0o600
    assert check_secrets(target) == len(SECRETS)
    values = read_env_file(target)
    assert values["POSTGRES_USER"] == read_env_file(ENV_EXAMPLE)["POSTGRES_USER"]
    assert len({values[name] for name in SECRETS}) == len(SECRETS)
    with pytest.raises(InvalidInput, match="exists"):
        write_new_env(ENV_EXAMPLE, target)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("REDIS_PASSWORD", "", "REDIS_PASSWORD is missing or empty"),
        ("POSTGRES_PASSWORD", "ChangeMe", "POSTGRES_PASSWORD is the placeholder 'ChangeMe'"),
        ("AIRFLOW_ADMIN_PASSWORD", "admin", "AIRFLOW_ADMIN_PASSWORD is the placeholder 'admin'"),
        ("AIRFLOW_OPERATOR_PASSWORD", "Tr0ub4dor&3", "has 11 characters, fewer than 16"),
        ("MLFLOW_DB_PASSWORD", "abababababababababab", "uses 2 distinct characters, fewer than 8"),
        ("AIRFLOW_JWT_SECRET", "k7Qx9pL2mN4vB8rT6yW1zE3", "has 23 characters, fewer than 32"),
        (
            "AIRFLOW_FERNET_KEY",
            "not-a-key-but-long-enough-to-pass-length-xx",
            "is not a Fernet key",
        ),
    ],
)
def test_each_weakness_is_named(tmp_path: Path, name: str, value: str, reason: str) -> None:
    path = _with(_strong(tmp_path), **{name: value})
    with pytest.raises(InvalidInput) as refused:
        check_secrets(path)
    lines = str(refused.value).splitlines()
    assert lines[0] == "1 weak secret(s); nothing starts:"
    assert reason in lines[1] and name in lines[1] and str(path) in lines[1]
    if value and "placeholder" not in reason:
        assert value not in str(refused.value)  # a real secret is never echoed


def test_a_shared_secret_is_refused(tmp_path: Path) -> None:
    strong = _strong(tmp_path)
    shared = read_env_file(strong)["AIRFLOW_DB_PASSWORD"]
    path = _with(strong, MONITORING_DB_PASSWORD=shared)
    with pytest.raises(
        InvalidInput, match="MONITORING_DB_PASSWORD is the same as AIRFLOW_DB_PASSWORD"
    ):
        check_secrets(path)


def test_any_other_password_variable_is_judged_too(tmp_path: Path) -> None:
    path = _strong(tmp_path)
    path.write_text(path.read_text() + "SMTP_PASSWORD=change-me\n")
    with pytest.raises(InvalidInput, match="SMTP_PASSWORD is the placeholder"):
        check_secrets(path)


def _secrets_check_service(env_file: Path) -> dict:
    result = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO_ROOT,
    )
    return yaml.safe_load(result.stdout)["services"]["secrets-check"]


def _start(service: dict) -> subprocess.CompletedProcess[str]:
    """The service's command with its environment, as the container would run it."""
    command = list(service["command"])
    assert command[:3] == ["python", "-m", "driftline.cli"]
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    environment = {**keep, **{k: str(v) for k, v in service["environment"].items()}}
    return subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "python"), *command[1:]],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_start_up_refuses_a_weak_env_and_accepts_a_strong_one(tmp_path: Path) -> None:
    _compose_or_skip()
    strong = _strong(tmp_path)
    weak = _with(strong, AIRFLOW_JWT_SECRET="change-me", REDIS_PASSWORD="short")
    refused = _start(_secrets_check_service(weak))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert (
        "AIRFLOW_JWT_SECRET is the placeholder 'change-me' (from the environment)" in refused.stderr
    )
    assert "REDIS_PASSWORD has 5 characters, fewer than 16" in refused.stderr
    started = _start(_secrets_check_service(strong))
    assert started.returncode == 0, started.stderr
    assert f"check-secrets: {len(SECRETS)} secrets hold" in started.stdout
