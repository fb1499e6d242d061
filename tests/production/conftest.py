"""The production profile, natively: the same stack as docker-compose.yaml, as processes on
this machine's PostgreSQL and Redis. Airflow metadata on PostgreSQL with the LocalExecutor,
an MLflow tracking server on PostgreSQL reached over HTTP and closed by MLflow's basic-auth
app (the workers' account made as airflow-init makes it), Feast with the SQL registry and
the Redis online store, the monitoring store on PostgreSQL.

Each run creates uniquely named databases and a unique Feast project (its Redis keys carry
the project name) and removes them afterwards, even when a test fails. Without PostgreSQL
or Redis the tests skip with the reason; with REQUIRE_SERVICES=1 that is a failure.
"""

from __future__ import annotations

import os
import socket
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


def pg_url(database: str, driver: str = "psycopg") -> str:
    return f"postgresql+{driver}://{PG['user']}@{PG['host']}:{PG['port']}/{database}"


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
    project = f"driftline_{run_id}"
    create_databases(list(databases.values()))
    stack = None
    try:
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
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_url(databases["airflow"], "psycopg2"),
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                "FEAST_FS_YAML_FILE_PATH": str(
                    REPO_ROOT / "feature_repo" / "feature_store.production.yaml"
                ),
                "DRIFTLINE_FEAST_PROJECT": project,
                "DRIFTLINE_FEAST_REGISTRY_URL": pg_url(databases["feast"]),
                "DRIFTLINE_FEAST_REDIS": f"{REDIS['host']}:{REDIS['port']},db=0",
                "DRIFTLINE_MONITORING_DB_URL": pg_url(databases["monitoring"]),
            }.items():
                patch.setenv(key, value)
            stack = up(
                port=free_port(),
                mlflow_port=mlflow_port,
                world=WORLD,
                # the first retrain is as of the day after the newest data (one clock), so
                # its 28-day window starts on day 9: past the world's warm-up week
                days=44,
                mlflow_server=(pg_url(databases["mlflow"], "psycopg2"), str(home / "mlartifacts")),
                mlflow_basic_auth=True,
            )
            yield Production(stack, run_id, databases, project)
    finally:
        if stack is not None:
            stack.stop()
        drop_databases(list(databases.values()))
        delete_redis_keys(project)
