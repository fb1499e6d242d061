"""docker-compose.yaml is validated without a Docker engine, and the check can fail."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from driftline.compose_check import compose_config, documented_variables, problems
from driftline.settings import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"


def _compose_or_skip() -> None:
    if shutil.which("docker-compose") is None:
        message = "docker-compose is not installed (Debian: apt-get install docker-compose)"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)


def test_shipped_compose_file_passes_every_check() -> None:
    assert problems(COMPOSE, ENV_EXAMPLE) == []


def test_compose_itself_accepts_the_file() -> None:
    _compose_or_skip()
    ok, output = compose_config(COMPOSE, ENV_EXAMPLE)
    assert ok, output


def test_env_example_holds_no_secret_and_is_git_tracked_while_env_is_ignored() -> None:
    values = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    for key, value in values.items():
        if "PASSWORD" in key or "SECRET" in key or "FERNET" in key:
            assert value == "change-me", key
    assert ".env" in (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_JWT_SECRET"} <= documented_variables(
        ENV_EXAMPLE
    )


def test_a_literal_password_and_an_undocumented_variable_fail(tmp_path: Path) -> None:
    broken = (
        COMPOSE.read_text()
        .replace("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}", "POSTGRES_PASSWORD: hunter2", 1)
        .replace("${MLFLOW_PORT:-5000}", "${MLFLOW_UI_PORT:-5000}")
    )
    broken = broken.replace(
        "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}@", "redis://:swordfish@"
    )
    path = tmp_path / "docker-compose.yaml"
    path.write_text(broken)
    found = problems(path, ENV_EXAMPLE)
    assert (
        "services.postgres.environment.POSTGRES_PASSWORD holds a literal secret; take it from .env"
        in found
    )
    assert "${MLFLOW_UI_PORT} is used but not documented in .env.example" in found
    assert any("AIRFLOW__CELERY__BROKER_URL has a literal password in a URL" in p for p in found)


def test_missing_service_and_health_check_fail(tmp_path: Path) -> None:
    import yaml

    compose = yaml.safe_load(COMPOSE.read_text())
    del compose["services"]["airflow-triggerer"]
    del compose["services"]["redis"]["healthcheck"]
    path = tmp_path / "docker-compose.yaml"
    path.write_text(yaml.safe_dump(compose))
    found = problems(path, ENV_EXAMPLE)
    assert "service 'airflow-triggerer' is missing" in found
    assert "service 'redis' has no health check" in found


def test_compose_rejects_a_file_missing_a_mandatory_variable(tmp_path: Path) -> None:
    _compose_or_skip()
    env = tmp_path / ".env"
    env.write_text(
        "\n".join(
            line
            for line in ENV_EXAMPLE.read_text().splitlines()
            if not line.startswith("REDIS_PASSWORD")
        )
    )
    ok, output = compose_config(COMPOSE, env)
    assert not ok and "set REDIS_PASSWORD in .env" in output


def _broken(tmp_path: Path, change) -> list[str]:
    import yaml

    compose = yaml.safe_load(COMPOSE.read_text())
    change(compose["services"])
    path = tmp_path / "docker-compose.yaml"
    path.write_text(yaml.safe_dump(compose))
    return problems(path, ENV_EXAMPLE)


def test_a_secret_the_checker_does_not_judge_fails(tmp_path: Path) -> None:
    found = _broken(
        tmp_path, lambda services: services["secrets-check"]["environment"].pop("REDIS_PASSWORD")
    )
    assert found == ["secret ${REDIS_PASSWORD} is used but 'secrets-check' does not judge it"]


def test_a_service_that_can_start_before_the_secrets_are_judged_fails(tmp_path: Path) -> None:
    found = _broken(tmp_path, lambda services: services["redis"].pop("depends_on"))
    assert found == ["service 'redis' can start before 'secrets-check' has judged .env"]


def test_a_volume_nobody_hands_to_its_writer_fails(tmp_path: Path) -> None:
    def other_owner(services: dict) -> None:
        services["volumes-init"]["command"] = [
            "bash",
            "-c",
            "chown -R 50000:0 /opt/driftline && chown -R 65534:65534 /prometheus "
            "&& chown -R 472:0 /var/lib/grafana",
        ]

    assert _broken(tmp_path, other_owner) == [
        "service 'mlflow' runs as 50000:0 and writes volume 'mlflow-artifacts' at /mlartifacts, "
        "but no root one-shot it waits for runs `chown -R 50000:0` on it"
    ]
    found = _broken(tmp_path, lambda services: services["mlflow"].pop("user"))
    assert found == [
        "service 'mlflow' writes volumes ['mlflow-artifacts'] but sets no non-root user"
    ]


def test_every_written_volume_is_owned_by_its_writer_in_the_shipped_file() -> None:
    import yaml

    from driftline.compose_check import security_problems

    compose = yaml.safe_load(COMPOSE.read_text())
    writers = {
        name
        for name, service in compose["services"].items()
        if any(":ro" not in str(v) for v in service.get("volumes") or [])
    }
    assert {"mlflow", "airflow-worker", "airflow-init", "volumes-init"} <= writers
    assert {"prometheus", "grafana"} <= writers
    assert security_problems(compose, COMPOSE.read_text()) == []


def test_a_literal_password_after_a_variable_user_is_found(tmp_path: Path) -> None:
    def literal(services: dict) -> None:
        services["mlflow"]["command"][3] = (
            "postgresql://${MLFLOW_DB_USER:-mlflow}:hunter2@postgres:5432/mlflow"
        )

    assert _broken(tmp_path, literal) == [
        "services.mlflow.command[3] has a literal password in a URL; take it from .env"
    ]


def test_prometheus_scrapes_the_monitoring_services_compose_runs() -> None:
    import yaml

    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["driftline-exporter"] == ["driftline-exporter:9108"]
    assert "--port" in services["driftline-exporter"]["command"]
    assert targets["airflow"] == ["statsd-exporter:9102"]
    assert targets["driftline-serving"] == ["serving:8000"]
    # every Airflow component sends its StatsD metrics to that exporter
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__METRICS__STATSD_ON"] == "True"
    assert env["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter"
    assert "--statsd.listen-udp=:9125" in services["statsd-exporter"]["command"]
    assert env["AIRFLOW__METRICS__STATSD_PORT"] == "9125"
    # images pinned by tag, never latest
    for name in ("prometheus", "grafana", "statsd-exporter"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image
    # the rules and the dashboard reach the containers
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert (
        "./deploy/grafana/dashboards:/etc/grafana/dashboards/driftline:ro"
        in (services["grafana"]["volumes"])
    )
