"""The monitoring store on a PostgreSQL that goes away and comes back: a private cluster
(never the shared one) stopped under an open connection pool. While it is down every call
is ``Unavailable`` (retry, CLI exit 3) naming the store; once it is back the same process
carries on without a restart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from driftline import monitoring
from driftline.errors import Unavailable
from tests.production.test_postgres_restart import Cluster, cluster  # noqa: F401 - fixture

pytestmark = pytest.mark.services


@pytest.fixture
def store(cluster: Cluster) -> Iterator[str]:  # noqa: F811 - the fixture imported above
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=cluster.port, user="postgres", dbname="postgres", autocommit=True
    ) as admin:
        admin.execute('CREATE DATABASE "monitoring_outage"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:{cluster.port}/monitoring_outage"
    try:
        yield url
    finally:
        monitoring._engines.pop(url, None)
        monitoring._migrated.discard(url)


def test_a_stopped_store_is_unavailable_and_the_pool_recovers(
    cluster: Cluster,  # noqa: F811
    store: str,
) -> None:
    assert monitoring.compare_and_set_champion(
        model="m", expected=None, new="1", actor="test", url=store
    )
    cluster.ctl("-m", "fast", "stop")
    try:
        with pytest.raises(Unavailable, match="monitoring store unreachable at postgresql") as down:
            monitoring.read_state("m", store)
        assert down.value.exit_code == 3 and down.value.retryable
        with pytest.raises(Unavailable):
            monitoring.append_audit(model="m", action="failed", actor="test", url=store)
    finally:
        cluster.start()
    assert monitoring.read_state("m", store).champion_version == "1"
    monitoring.append_audit(model="m", action="promoted", actor="test", url=store)
    assert monitoring.audit_log("m", url=store)[0]["action"] == "promoted"


@pytest.mark.timeout(60)  # without a connect timeout, libpq waits for ever
def test_a_server_that_never_answers_is_unavailable_within_the_connect_timeout() -> None:
    """A host that takes the TCP connection and then says nothing (hung, or its backlog
    full): libpq's connect_timeout ends the wait, so a task retries and an exporter scrape
    answers instead of hanging on it."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nothing ever reads or writes
        url = f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/silent"
        began = time.monotonic()
        try:
            with pytest.raises(Unavailable, match="monitoring store unreachable at postgresql"):
                monitoring.read_state("m", url)
        finally:
            monitoring._engines.pop(url, None)
            monitoring._migrated.discard(url)
        waited = time.monotonic() - began
    assert monitoring.PG_CONNECT_TIMEOUT_S - 1 <= waited < monitoring.PG_CONNECT_TIMEOUT_S * 3
