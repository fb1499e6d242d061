"""Refuse weak secrets before the production profile starts anything.

The compose file's first service, ``secrets-check``, runs ``driftline check-secrets`` with
every secret of ``.env`` in its environment; PostgreSQL, Redis, MLflow and Airflow wait for
it to succeed, so a weak ``.env`` starts nothing. ``driftline check-secrets --env-file .env``
runs the same rules on a file before deploying.

A secret is refused, with the variable named (never its value, unless it is a known
placeholder), when it is missing or empty, a placeholder (``change-me``, ``password``, ...),
shorter than its kind allows, made of too few distinct characters, the same as another
secret, or, for the Fernet key, not a Fernet key.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from driftline.errors import InvalidInput


@dataclass(frozen=True)
class Kind:
    min_length: int
    how: str


PASSWORD = Kind(16, "python -c 'import secrets; print(secrets.token_urlsafe(24))'")
SIGNING_KEY = Kind(32, "python -c 'import secrets; print(secrets.token_urlsafe(48))'")
FERNET = Kind(
    44,
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'",
)

# Every secret of the production profile. Any other variable whose name says it is a
# password or secret is checked as a password.
SECRETS: dict[str, Kind] = {
    "POSTGRES_PASSWORD": PASSWORD,
    "AIRFLOW_DB_PASSWORD": PASSWORD,
    "MLFLOW_DB_PASSWORD": PASSWORD,
    "FEAST_DB_PASSWORD": PASSWORD,
    "MONITORING_DB_PASSWORD": PASSWORD,
    "DRIFT_WRITER_PASSWORD": PASSWORD,
    "REDIS_PASSWORD": PASSWORD,
    "AIRFLOW_ADMIN_PASSWORD": PASSWORD,
    "AIRFLOW_OPERATOR_PASSWORD": PASSWORD,
    "AIRFLOW_JWT_SECRET": SIGNING_KEY,
    "AIRFLOW_API_SECRET_KEY": SIGNING_KEY,
    "AIRFLOW_FERNET_KEY": FERNET,
    "MLFLOW_ADMIN_PASSWORD": PASSWORD,
    "MLFLOW_TRACKING_PASSWORD": PASSWORD,
    "GRAFANA_ADMIN_PASSWORD": PASSWORD,
    "MLFLOW_SECRET_KEY": SIGNING_KEY,
}
_SECRET_NAME = re.compile(r"(PASSWORD|SECRET|FERNET_KEY|TOKEN)$")
PLACEHOLDERS = {
    "change-me",
    "changeme",
    "change_me",
    "changeit",
    "password",
    "passw0rd",
    "secret",
    "admin",
    "airflow",
    "postgres",
    "mlflow",
    "redis",
    "driftline",
    "default",
    "example",
    "test",
    "xxx",
    "todo",
    "123456",
    "12345678",
}
MIN_DISTINCT = 8


def secret_names(values: Mapping[str, str]) -> list[str]:
    """The declared secrets plus every other variable named like one, in a stable order."""
    extra = sorted(name for name in values if _SECRET_NAME.search(name) and name not in SECRETS)
    return [*SECRETS, *extra]


def _placeholder(value: str) -> bool:
    lowered = value.strip().lower()
    return lowered in PLACEHOLDERS or "change-me" in lowered or "changeme" in lowered


def _fernet_key(value: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(value.encode())) == 32
    except (binascii.Error, ValueError):
        return False


def weaknesses(values: Mapping[str, str], source: str) -> list[str]:
    """One line per refused secret of ``values`` (read from ``source``); empty when all hold."""
    found: list[str] = []
    seen: dict[str, str] = {}
    for name in secret_names(values):
        kind = SECRETS.get(name, PASSWORD)
        value = values.get(name, "")
        problem = ""
        if not value:
            problem = "is missing or empty"
        elif _placeholder(value):
            problem = f"is the placeholder {value!r}"
        elif kind is FERNET and not _fernet_key(value):
            problem = "is not a Fernet key (32 url-safe base64-encoded bytes)"
        elif len(value) < kind.min_length:
            problem = f"has {len(value)} characters, fewer than {kind.min_length}"
        elif len(set(value)) < MIN_DISTINCT:
            problem = f"uses {len(set(value))} distinct characters, fewer than {MIN_DISTINCT}"
        elif value in seen:
            problem = f"is the same as {seen[value]}; every secret must be its own"
        if problem:
            found.append(f"check-secrets: {name} {problem} (from {source}); generate: {kind.how}")
        elif value:
            seen[value] = name
    return found


def new_secret(kind: Kind) -> str:
    """A fresh secret of ``kind`` that the rules accept."""
    while True:
        if kind is FERNET:
            value = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        else:
            value = secrets.token_urlsafe(kind.min_length * 3 // 2)
        if len(set(value)) >= MIN_DISTINCT and not _placeholder(value):
            return value


def new_env(example: Path) -> str:
    """``example`` (.env.example) with every secret replaced by a freshly generated one."""
    names = set(secret_names(read_env_file(example)))
    lines = []
    for raw in example.read_text().splitlines():
        key = (
            raw.split("=", 1)[0].strip() if "=" in raw and not raw.lstrip().startswith("#") else ""
        )
        lines.append(f"{key}={new_secret(SECRETS.get(key, PASSWORD))}" if key in names else raw)
    return "\n".join(lines) + "\n"


def write_new_env(example: Path, target: Path) -> Path:
    """Write :func:`new_env` to ``target`` (0600); an existing file is never overwritten."""
    from driftline.files import write_atomic

    if target.exists():
        raise InvalidInput(f"new-env: {target} exists; move it away first (it may hold secrets)")
    return write_atomic(target, new_env(example), mode=0o600)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a dotenv file (quotes stripped, comments and blanks skipped)."""
    if not path.is_file():
        raise InvalidInput(f"check-secrets: env file {path} does not exist")
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise InvalidInput(f"check-secrets: {path}:{number} is not KEY=value: {raw[:60]!r}")
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def check_secrets(env_file: Path | None = None) -> int:
    """Raise InvalidInput listing every weak secret; returns how many secrets were checked."""
    if env_file is None:
        values, source = dict(os.environ), "the environment"
    else:
        values, source = read_env_file(env_file), str(env_file)
    found = weaknesses(values, source)
    if found:
        raise InvalidInput("\n".join([f"{len(found)} weak secret(s); nothing starts:", *found]))
    return len(secret_names(values))
