"""Least privilege in PostgreSQL: deploy/postgres/init-databases.sh run natively against this
machine's PostgreSQL, the monitoring schema migrated by its own role, then the grants checked
by connecting as each role.

Uniquely named databases and roles per run, dropped afterwards even on failure. (The local
server trusts every connection, so passwords are set but not exercised here.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from driftline import monitoring
from tests.production.conftest import (
    COMPONENT_DBS as COMPONENTS,
)
from tests.production.conftest import (
    INIT_ROLE_VARIABLES,
    PG,
    _admin,
    drop_databases,
    drop_roles,
    init_databases,
    init_env,
    require_services,
)


@dataclass
class Cluster:
    databases: dict[str, str]
    roles: dict[str, str]
    env: dict[str, str]

    def connect(self, role: str, component: str):
        import psycopg

        return psycopg.connect(
            host=PG["host"],
            port=PG["port"],
            user=self.roles[role],
            dbname=self.databases[component],
            autocommit=True,
        )

    def url(self, role: str, component: str) -> str:
        return (
            f"postgresql+psycopg://{self.roles[role]}@{PG['host']}:{PG['port']}/"
            f"{self.databases[component]}"
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_services()
    run = uuid.uuid4().hex[:8]
    databases = {c: f"driftline_test_{run}_{c}" for c in COMPONENTS}
    roles = {role: f"driftline_{run}_{role}" for role in INIT_ROLE_VARIABLES}
    env = init_env(databases, roles)
    try:
        init_databases(env)
        yield Cluster(databases, roles, env)
    finally:
        drop_databases(list(databases.values()))
        drop_roles(list(roles.values()))


def _denied(action) -> str:
    import psycopg

    with pytest.raises(psycopg.Error) as caught:
        action()
    return str(caught.value)


def test_each_component_owns_its_database_and_cannot_open_the_others(cluster: Cluster) -> None:
    with _admin() as admin:
        owners = dict(
            admin.execute(
                "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = ANY(%s)",
                (list(cluster.databases.values()),),
            ).fetchall()
        )
        flags = admin.execute(
            "SELECT bool_or(rolsuper OR rolcreatedb OR rolcreaterole) FROM pg_roles "
            "WHERE rolname = ANY(%s)",
            (list(cluster.roles.values()),),
        ).fetchone()[0]
    assert owners == {cluster.databases[c]: cluster.roles[c] for c in COMPONENTS}
    assert flags is False
    for component in COMPONENTS:
        with cluster.connect(component, component) as own:  # owner: may create its schema
            own.execute("CREATE TABLE probe (id int)")
            own.execute("DROP TABLE probe")
        for other in COMPONENTS:
            if other != component:
                message = _denied(lambda c=component, o=other: cluster.connect(c, o))
                assert "permission denied for database" in message
    message = _denied(lambda: cluster.connect("writer", "airflow"))
    assert "permission denied for database" in message


def test_the_outside_writer_can_insert_drift_events_and_nothing_else(cluster: Cluster) -> None:
    owner = cluster.url("monitoring", "monitoring")
    monitoring.migrate(owner)
    statements = monitoring.grant_event_writer(cluster.roles["writer"], url=owner)
    assert any(
        s.startswith("GRANT INSERT (model, source, payload) ON drift_events") for s in statements
    )

    with cluster.connect("writer", "monitoring") as writer:
        writer.execute(
            "INSERT INTO drift_events (model, source, payload) VALUES (%s, %s, %s)",
            ("fraud_detection", "outside-monitor", json.dumps({"reason": "drift"})),
        )
        for statement in (
            "UPDATE drift_events SET status = 'consumed'",
            "DELETE FROM drift_events",
            "SELECT * FROM drift_events",
            "INSERT INTO drift_events (model, source, payload, status) "
            "VALUES ('fraud_detection', 'x', '{}', 'consumed')",
            "INSERT INTO promotion_audit (created_at, model, action, reasons, metrics, actor) "
            "VALUES (now(), 'fraud_detection', 'promoted', '[]', '{}', 'x')",
            "UPDATE model_state SET champion_version = '9'",
            "CREATE TABLE evil (id int)",
        ):
            message = _denied(lambda s=statement: writer.execute(s))
            assert "permission denied" in message, (statement, message)

    # the row the writer could insert is a new event with the database's timestamps
    with cluster.connect("monitoring", "monitoring") as store:
        rows = store.execute(
            "SELECT model, source, status, status_reason, created_at IS NOT NULL, "
            "updated_at IS NOT NULL FROM drift_events"
        ).fetchall()
    assert rows == [("fraud_detection", "outside-monitor", "new", "", True, True)]
    event = monitoring.drift_event(1, url=owner)
    assert event is not None and event["payload"] == {"reason": "drift"}


def test_the_init_script_runs_again_without_harm(cluster: Cluster) -> None:
    output = init_databases(cluster.env)  # after the writer test: data and grants survive
    assert output.count("owned by") == len(COMPONENTS)
    with cluster.connect("writer", "monitoring") as writer:
        writer.execute(
            "INSERT INTO drift_events (model, source, payload) VALUES ('m', 'again', '{}')"
        )
    with cluster.connect("monitoring", "monitoring") as store:
        sources = store.execute("SELECT source FROM drift_events ORDER BY id").fetchall()
    assert sources == [("outside-monitor",), ("again",)]


def test_grant_writer_names_a_missing_role(cluster: Cluster) -> None:
    from driftline.errors import InvalidInput

    with pytest.raises(InvalidInput, match="role 'nobody_here' does not exist"):
        monitoring.grant_event_writer("nobody_here", url=cluster.url("monitoring", "monitoring"))
