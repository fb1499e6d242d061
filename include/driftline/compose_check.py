"""Check docker-compose.yaml the way a reviewer would, without a Docker engine.

`docker-compose config` (Debian's docker-compose, when installed) validates the file
against the compose specification and interpolates it with .env.example; on top of that
:func:`problems` asserts what matters for driftline: every service the DAGs need exists,
long-running services have health checks and wait for healthy dependencies, every
``${VAR}`` is documented in .env.example, and no password or secret is written literally.
Security: every secret the file uses is judged by the ``secrets-check`` service, which
every other service waits for; and every named volume a service writes is handed to that
service's user by a one-shot service running as root before it starts (a volume is created
root-owned, and the Airflow image runs as uid 50000).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REQUIRED_SERVICES = (
    "secrets-check",
    "volumes-init",
    "postgres",
    "redis",
    "mlflow",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "driftline-exporter",
    "statsd-exporter",
    "prometheus",
    "grafana",
    "serving",
)
ONE_SHOT = {"secrets-check", "volumes-init", "airflow-init"}
SECRETS_CHECK = "secrets-check"
# official images that start as root and hand their own data directory to their user
SELF_OWNING_IMAGES = ("postgres:", "redis:")
# ${VAR}, ${VAR:-default}, ${VAR:?message} — but not $${VAR}, which compose leaves to the shell
_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:]?[-?][^}]*)?\}")
_SECRET_KEY = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|PRIVATE_KEY", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"://(?:\$\{[^}]*\}|[^:/@\s$])*:([^@\s]+)@")


def documented_variables(env_example: Path) -> set[str]:
    names = set()
    for line in env_example.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            names.add(line.split("=", 1)[0].strip())
    return names


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, string) in the document, keys included as path parts."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            found += _strings(value, f"{path}.{key}" if path else str(key))
        return found
    if isinstance(node, list):
        found = []
        for index, value in enumerate(node):
            found += _strings(value, f"{path}[{index}]")
        return found
    return [(path, str(node))] if node is not None else []


def _needs(services: dict[str, Any], name: str) -> set[str]:
    """Every service ``name`` waits for, directly or through others."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dependency in (services.get(todo.pop()) or {}).get("depends_on") or {}:
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return seen


def _writable_volumes(service: dict[str, Any], named: set[str]) -> dict[str, str]:
    """Named volume -> mount path, for every named volume the service mounts read-write."""
    mounts = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = parts[0], parts[1] if len(parts) > 1 else ""
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            source, target = entry.get("source", ""), entry.get("target", "")
            read_only = bool(entry.get("read_only"))
        if source in named and not read_only:
            mounts[source] = target
    return mounts


def _command_text(service: dict[str, Any]) -> str:
    command = service.get("command") or ""
    return " ".join(command) if isinstance(command, list) else str(command)


def security_problems(compose: dict[str, Any], text: str) -> list[str]:
    """Secrets judged before start-up; written volumes owned by their writer."""
    services: dict[str, Any] = compose.get("services") or {}
    found: list[str] = []
    checker = services.get(SECRETS_CHECK) or {}
    judged = " ".join(str(v) for v in (checker.get("environment") or {}).values())
    for variable in sorted(set(_VARIABLE.findall(text))):
        if _SECRET_KEY.search(variable) and f"${{{variable}" not in judged:
            found.append(f"secret ${{{variable}}} is used but {SECRETS_CHECK!r} does not judge it")
    for name in services:
        if name != SECRETS_CHECK and SECRETS_CHECK not in _needs(services, name):
            found.append(f"service {name!r} can start before {SECRETS_CHECK!r} has judged .env")

    named = set((compose.get("volumes") or {}).keys())
    for name, service in services.items():
        image = str(service.get("image") or "")
        volumes = _writable_volumes(service, named)
        if not volumes or image.startswith(SELF_OWNING_IMAGES):
            continue
        user = str(service.get("user") or "")
        if not user or user.split(":")[0] in ("0", "root"):
            if name in ONE_SHOT:
                continue  # a root one-shot (the chown itself)
            found.append(
                f"service {name!r} writes volumes {sorted(volumes)} but sets no non-root user"
            )
            continue
        needs = _needs(services, name)
        for volume, path in sorted(volumes.items()):
            owners = [
                other
                for other in needs
                if other in ONE_SHOT
                and str((services[other] or {}).get("user") or "").split(":")[0] in ("0", "root")
                and (target := _writable_volumes(services[other], named).get(volume))
                and re.search(
                    rf"chown -R {re.escape(user)}\b[^;&|]*\s{re.escape(target)}(\s|$)",
                    _command_text(services[other]),
                )
            ]
            if not owners:
                found.append(
                    f"service {name!r} runs as {user} and writes volume {volume!r} at {path}, "
                    f"but no root one-shot it waits for runs `chown -R {user}` on it"
                )
    return found


def problems(compose_file: Path, env_example: Path) -> list[str]:
    """Everything wrong with the compose file; empty when it is fine."""
    compose = yaml.safe_load(compose_file.read_text())
    services: dict[str, Any] = compose.get("services") or {}
    found: list[str] = []

    for name in REQUIRED_SERVICES:
        if name not in services:
            found.append(f"service {name!r} is missing")
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        if not (service.get("healthcheck") or {}).get("test"):
            found.append(f"service {name!r} has no health check")
        for dependency, condition in (service.get("depends_on") or {}).items():
            wanted = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            if isinstance(condition, dict) and condition.get("condition") != wanted:
                found.append(f"service {name!r} does not wait for {dependency!r} to be {wanted}")

    documented = documented_variables(env_example)
    text = compose_file.read_text()
    for variable in sorted(set(_VARIABLE.findall(text))):
        if variable not in documented:
            found.append(f"${{{variable}}} is used but not documented in {env_example.name}")

    for path, value in _strings(compose):
        key = path.rsplit(".", 1)[-1]
        if (
            _SECRET_KEY.search(key)
            and value
            and not _VARIABLE.search(value)
            and not value.endswith((".json", ".txt"))
        ):
            found.append(f"{path} holds a literal secret; take it from .env")
        for credential in _URL_CREDENTIALS.findall(value):
            if not _VARIABLE.fullmatch(credential):
                found.append(f"{path} has a literal password in a URL; take it from .env")
    return found + security_problems(compose, text) + access_problems(services)


def access_problems(services: dict[str, Any]) -> list[str]:
    """Nothing open: a production auth manager for Airflow, MLflow behind its basic-auth app
    (deploy/mlflow/start-mlflow.sh runs it) and published on the host's loopback at most."""
    found = []
    for name, service in services.items():
        manager = str((service.get("environment") or {}).get("AIRFLOW__CORE__AUTH_MANAGER", ""))
        if "SimpleAuthManager" in manager:
            found.append(
                f"service {name!r} runs Airflow's SimpleAuthManager, which Airflow documents as "
                "for development; use the FAB auth manager"
            )
    mlflow = services.get("mlflow") or {}
    command = mlflow.get("command") or []
    command = command if isinstance(command, list) else command.split()
    if not {"basic-auth", "/opt/driftline-deploy/start-mlflow.sh"} & set(map(str, command)):
        found.append(
            "service 'mlflow' does not run MLflow's basic-auth app (--app-name basic-auth)"
        )
    if "*" in map(str, command):
        found.append("service 'mlflow' allows every Host header (--allowed-hosts '*')")
    for port in mlflow.get("ports") or []:
        if not str(port).startswith("127.0.0.1:"):
            found.append(
                f"service 'mlflow' publishes {port!r} beyond this host; bind it to 127.0.0.1 "
                "(or put a TLS proxy in front)"
            )
    return found


def compose_config(compose_file: Path, env_example: Path) -> tuple[bool, str]:
    """Run `docker-compose config -q` with .env.example; (ok, output). Raises FileNotFoundError
    when no docker-compose is installed."""
    binary = shutil.which("docker-compose")
    if binary is None:
        raise FileNotFoundError(
            "docker-compose is not installed (Debian: apt-get install docker-compose)"
        )
    result = subprocess.run(
        [binary, "--env-file", str(env_example), "-f", str(compose_file), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=compose_file.parent,
    )
    return result.returncode == 0, (result.stdout + result.stderr).strip()
