"""The production profile, natively: the same stack as docker-compose.yaml, as processes on
this machine's PostgreSQL and Redis. Airflow metadata on PostgreSQL with the CeleryExecutor
(Redis broker, two Celery worker processes), an MLflow tracking server on PostgreSQL reached
over HTTP and closed by MLflow's basic-auth app (the workers' account made as airflow-init
makes it), Feast with the SQL registry and
the Redis online store, the monitoring store on PostgreSQL.

The databases and roles come from the compose file's own init script
(deploy/postgres/init-databases.sh): each component connects as its own role, owning only
its own database, as in compose. Each run uses unique database, role and Feast project
names (the Redis keys carry the project) and removes them afterwards, even when a test
fails. Without PostgreSQL or Redis the tests skip with the reason; with REQUIRE_SERVICES=1
that is a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from driftline.settings import REPO_ROOT
from driftline.stack import Stack, free_port, up
from tests.conftest import WORLD, isolate_environment

PG = {
    "host": os.environ.get("DRIFTLINE_TEST_PG_HOST", "127.0.0.1"),
    "port": 5432,
    "user": "postgres",
}
REDIS = {"host": os.environ.get("DRIFTLINE_TEST_REDIS_HOST", "127.0.0.1"), "port": 6379}
COMPONENT_DBS = ("airflow", "mlflow", "feast", "monitoring")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def require_services() -> None:
    missing = [
        f"{name} at {cfg['host']}:{cfg['port']}"
        for name, cfg in (("PostgreSQL", PG), ("Redis", REDIS))
        if not _reachable(cfg["host"], cfg["port"])
    ]
    if missing:
        message = f"production-profile tests need {' and '.join(missing)}"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"REQUIRE_SERVICES=1 but {message} is not reachable")
        pytest.skip(f"{message} (not reachable)")


def pg_url(database: str, driver: str = "psycopg", user: str | None = None) -> str:
    return f"postgresql+{driver}://{user or PG['user']}@{PG['host']}:{PG['port']}/{database}"


INIT_SCRIPT = REPO_ROOT / "deploy" / "postgres" / "init-databases.sh"
# component -> the init script's variable naming its database
INIT_DATABASE_VARIABLES = {
    "airflow": "AIRFLOW_DB",
    "mlflow": "MLFLOW_DB",
    "feast": "FEAST_REGISTRY_DB",
    "monitoring": "MONITORING_DB",
}
INIT_ROLE_VARIABLES = {
    "airflow": "AIRFLOW_DB",
    "mlflow": "MLFLOW_DB",
    "feast": "FEAST_DB",
    "monitoring": "MONITORING_DB",
    "writer": "DRIFT_WRITER",
}


def init_env(databases: dict[str, str], roles: dict[str, str]) -> dict[str, str]:
    """The environment compose gives the init script, for these names (fresh passwords)."""
    env = {"POSTGRES_USER": PG["user"], "PGHOST": PG["host"], "PGPORT": str(PG["port"])}
    for component, variable in INIT_DATABASE_VARIABLES.items():
        env[variable] = databases[component]
    for role, prefix in INIT_ROLE_VARIABLES.items():
        env["DRIFT_WRITER_USER" if role == "writer" else f"{prefix}_USER"] = roles[role]
        env[f"{prefix}_PASSWORD"] = uuid.uuid4().hex
    return env


def init_databases(env: dict[str, str]) -> str:
    """Run the compose file's init script natively; returns its output."""
    result = subprocess.run(
        ["bash", str(INIT_SCRIPT)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def drop_roles(names: list[str]) -> None:
    with _admin() as connection:
        for name in names:
            connection.execute(f'DROP ROLE IF EXISTS "{name}"')


def _admin():
    import psycopg

    return psycopg.connect(
        host=PG["host"], port=PG["port"], user=PG["user"], dbname="postgres", autocommit=True
    )


def create_databases(names: list[str]) -> None:
    with _admin() as connection:
        for name in names:
            connection.execute(f'CREATE DATABASE "{name}"')


def drop_databases(names: list[str]) -> None:
    with _admin() as connection:
        for name in names:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')


def delete_redis_keys(project: str) -> int:
    import redis

    client = redis.Redis(host=REDIS["host"], port=REDIS["port"])
    keys = list(client.scan_iter(match=f"*{project}*".encode(), count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


@dataclass
class Production:
    stack: Stack
    run_id: str
    databases: dict[str, str]
    project: str
    roles: dict[str, str]

    def sql(self, component: str, query: str, *args: object) -> list[tuple]:
        import psycopg

        with psycopg.connect(
            host=PG["host"], port=PG["port"], user=PG["user"], dbname=self.databases[component]
        ) as connection:
            return connection.execute(query, args).fetchall()


@pytest.fixture(scope="package")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    require_services()
    with production_stack(tmp_path_factory) as running:
        yield running


@contextmanager
def production_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    """The production-profile stack on the PostgreSQL at ``PG`` (the fault drills point it at
    a private cluster) and the Redis at ``REDIS``; removed afterwards, even on failure."""
    run_id = uuid.uuid4().hex[:10]
    databases = {component: f"driftline_test_{run_id}_{component}" for component in COMPONENT_DBS}
    roles = {role: f"driftline_{run_id}_{role}" for role in INIT_ROLE_VARIABLES}
    project = f"driftline_{run_id}"
    stack = None
    try:
        init_databases(init_env(databases, roles))
        with pytest.MonkeyPatch.context() as patch:
            home = tmp_path_factory.mktemp("production") / "state"
            home.mkdir()
            isolate_environment(patch, home)
            mlflow_port = free_port()
            # MLflow closed as compose closes it (basic-auth app, the workers' own account);
            # every secret generated for this run
            import secrets

            for key, value in {
                "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_urlsafe(24),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
                "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{mlflow_port},localhost:{mlflow_port}",
                "MLFLOW_AUTH_CONFIG_PATH": str(home / "mlflow-basic-auth.ini"),
                "MLFLOW_TRACKING_USERNAME": "driftline",
                "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(24),
            }.items():
                patch.setenv(key, value)
            # a spec without cooldown, so each event of the tests starts its own retrain
            models = home / "models"
            models.mkdir()
            import yaml

            raw = yaml.safe_load(
                (REPO_ROOT / "include" / "models" / "fraud_detection.yaml").read_text()
            )
            raw["drift"].update(cooldown_hours=0, event_poll_seconds=2)
            (models / "fraud_detection.yaml").write_text(yaml.safe_dump(raw))
            for key, value in {
                "DRIFTLINE_MODELS_DIR": str(models),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_url(
                    databases["airflow"], "psycopg2", roles["airflow"]
                ),
                # as compose: the CeleryExecutor, Redis as broker, the result backend on the
                # Airflow database, two worker processes (the stack starts them); a queue of
                # this run's own, so runs sharing the Redis never take each other's tasks
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS['host']}:{REDIS['port']}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+"
                + pg_url(databases["airflow"], "psycopg2", roles["airflow"]).replace(
                    "+psycopg2", "", 1
                ),
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": project,
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
                "DRIFTLINE_CELERY_WORKERS": "2",
                # a task whose worker died is failed (and retried) after 90 s, not 5 minutes
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "90",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "10",
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                "FEAST_FS_YAML_FILE_PATH": str(
                    REPO_ROOT / "feature_repo" / "feature_store.production.yaml"
                ),
                "DRIFTLINE_FEAST_PROJECT": project,
                "DRIFTLINE_FEAST_REGISTRY_URL": pg_url(databases["feast"], user=roles["feast"]),
                "DRIFTLINE_FEAST_REDIS": f"{REDIS['host']}:{REDIS['port']},db=0",
                "DRIFTLINE_MONITORING_DB_URL": pg_url(
                    databases["monitoring"], user=roles["monitoring"]
                ),
            }.items():
                patch.setenv(key, value)
            stack = up(
                port=free_port(),
                mlflow_port=mlflow_port,
                serve_port=free_port(),
                world=WORLD,
                # the first retrain is as of the day after the newest data (one clock), so
                # its 28-day window starts on day 9: past the world's warm-up week
                days=44,
                mlflow_server=(
                    pg_url(databases["mlflow"], "psycopg2", roles["mlflow"]),
                    str(home / "mlartifacts"),
                ),
                mlflow_basic_auth=True,
            )
            from driftline.monitoring import grant_event_writer

            grant_event_writer(roles["writer"])  # as airflow-init does
            yield Production(stack, run_id, databases, project, roles)
    finally:
        if stack is not None:
            stack.stop()
        drop_databases(list(databases.values()))
        drop_roles(list(roles.values()))
        delete_redis_keys(project)
