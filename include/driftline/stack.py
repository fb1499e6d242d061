"""The local stack: Airflow's components, the MLflow UI and the scoring service as background
processes.

``driftline up`` / ``make up`` start them, ``driftline down`` / ``make down`` stop exactly
what was started — by the process-group ids recorded in ``$DRIFTLINE_HOME/run/stack.json``,
never by process name. Each record carries the leader's start time and command line (from
``/proc``); a group is signalled only while its leader is still that process (same start
time), so a stale record after a crash or a reboot never reaches an unrelated program. ``up``
on a stack with a dead component restarts only what is dead. Tests use the same class with a
temporary state directory.

Access: no anonymous access. Airflow's simple auth manager gets two accounts, ``admin``
(role admin) and ``operator`` (role user: may trigger and clear runs, may not administer —
connections, variables, pools stay out of reach). Their passwords are generated on the
first start by driftline (never by Airflow, which would print them into the api-server's
log) and kept in a git-ignored file, mode 0600, in the state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftline.errors import DriftlineError
from driftline.files import write_json
from driftline.settings import REPO_ROOT, Settings, get_settings

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# the scoring service, `driftline serve`
SERVE = "serve"
# With AIRFLOW__CORE__EXECUTOR=CeleryExecutor the stack also runs Celery workers, as compose
# does: DRIFTLINE_CELERY_WORKERS of them (default 2), each with its own log-server port.
CELERY_WORKER = "celery-worker-"
# Airflow settings taken from the caller's environment (every other AIRFLOW__ variable is the
# stack's own): the Celery executor's broker, result backend and queue, the heartbeat timeout,
# the metrics settings (StatsD / OpenTelemetry, README "Monitoring")
PASSED_THROUGH = (
    "AIRFLOW__METRICS__",
    "AIRFLOW__CELERY__",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__",
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
    "AIRFLOW__API_AUTH__JWT_SECRET",
)
USERS = {"admin": "admin", "operator": "user"}
# the alphabet of Airflow's simple auth manager (no look-alike characters)
_PASSWORD_ALPHABET = "abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789"


def process_identity(pid: int) -> dict[str, Any] | None:
    """The leader's start time (clock ticks after boot) and command line, or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    return {
        "start_time": int(fields[19]),
        "cmdline": " ".join(part.decode(errors="replace") for part in cmdline.split(b"\0") if part),
    }


def _group_alive(pgid: int) -> bool:
    """Does any process of the group still run? Zombies do not count: a component this
    process started and that was killed stays a zombie until reaped, so reap it first."""
    # not our child (started by another driftline process): nothing to reap
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's group: alive, and certainly not ours
    return any(state != "Z" for state in _group_states(pgid))


def _group_states(pgid: int) -> list[str]:
    """The /proc state letter of every process in a process group."""
    states = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # fields: state, ppid, pgrp, ...
            states.append(fields[0])
    return states


def _answers(url: str) -> bool:
    """``url`` answers 200 within 3 s."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# the scheduler's and the triggerer's log servers, the scheduler's health check
SIDE_PORTS = {
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": 8793,
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": 8794,
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": 8974,
}


@dataclass
class Stack:
    """Airflow (and optionally the MLflow UI) for one state directory."""

    settings: Settings = field(default_factory=get_settings)
    port: int = 8080
    mlflow_port: int | None = None
    # the scoring service (`driftline serve`), component "serve", when set
    serve_port: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # production profile: the MLflow process is the tracking server itself (backend store
    # URL, artifact destination); clients reach it through MLFLOW_TRACKING_URI over HTTP
    mlflow_server: tuple[str, str] | None = None
    # ... closed as compose closes it: MLflow's basic-auth app (deploy/mlflow/start-mlflow.sh,
    # its admin password, CSRF key and allowed hosts from the environment)
    mlflow_basic_auth: bool = False
    # the Prometheus exporter (`driftline exporter`) over the monitoring store; None: not run
    exporter_port: int | None = None
    # ports Airflow's processes open beside the API (log servers, scheduler health check);
    # chosen once per stack, see side_ports()
    _side_ports: dict[str, int] = field(default_factory=dict, repr=False)

    def side_ports(self) -> dict[str, int]:
        """Airflow's defaults (8793, 8794, 8974) for the stack on the default port; free ports
        for any other, so two stacks (tests, `driftline simulate --spec`) can run side by side."""
        if not self._side_ports:
            # a stack already recorded keeps its ports (a restarted component must match)
            self._side_ports.update(self.recorded().get("side_ports") or {})
        if not self._side_ports:
            for variable, default in SIDE_PORTS.items():
                chosen = os.environ.get(variable)
                self._side_ports[variable] = (
                    int(chosen) if chosen else (default if self.port == 8080 else free_port())
                )
        return self._side_ports

    @property
    def run_dir(self) -> Path:
        return self.settings.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.settings.home / "logs"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "stack.json"

    @property
    def passwords_file(self) -> Path:
        return self.settings.airflow_home / "passwords.json"

    @property
    def signing_key_file(self) -> Path:
        return self.settings.airflow_home / "jwt_secret"

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def mlflow_url(self) -> str | None:
        return f"http://localhost:{self.mlflow_port}" if self.mlflow_port else None

    @property
    def exporter_host(self) -> str:
        return os.environ.get("DRIFTLINE_EXPORTER_HOST") or "127.0.0.1"

    @property
    def exporter_url(self) -> str | None:
        if not self.exporter_port:
            return None
        host = "127.0.0.1" if self.exporter_host in ("0.0.0.0", "") else self.exporter_host
        return f"http://{host}:{self.exporter_port}"

    @property
    def serve_url(self) -> str | None:
        return f"http://127.0.0.1:{self.serve_port}" if self.serve_port else None

    def env(self) -> dict[str, str]:
        """Environment of every process of the stack."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AIRFLOW__") or k.startswith(PASSED_THROUGH)
        }
        env.update(self.settings.airflow_env())
        airflow_db = self.settings.airflow_home / "airflow.db"
        env.update(
            {
                # SQLite: wait up to a minute for a lock instead of failing after 5 s
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": os.environ.get(
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{airflow_db}?timeout=60"
                ),
                "AIRFLOW__CORE__EXECUTOR": os.environ.get(
                    "AIRFLOW__CORE__EXECUTOR", "LocalExecutor"
                ),
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                    f"{u}:{r}" for u, r in USERS.items()
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                # new DAG files appear within 30 s instead of the default 5 minutes
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
                **{variable: str(port) for variable, port in self.side_ports().items()},
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        if self.mlflow_url:
            env["DRIFTLINE_MLFLOW_UI"] = self.mlflow_url
        if "AIRFLOW__API_AUTH__JWT_SECRET" not in env:
            env["AIRFLOW__API_AUTH__JWT_SECRET"] = self.ensure_signing_key()
        for variable in _feast_metrics_variables():
            env.pop(variable, None)
        env.update(self.extra_env)
        return env

    def airflow(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run an ``airflow`` CLI command in the stack's environment."""
        result = subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise DriftlineError(
                f"airflow {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}"
            )
        return result

    # --- lifecycle ------------------------------------------------------------------------

    def recorded(self) -> dict[str, Any]:
        if not self.state_file.is_file():
            return {}
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError) as exc:
            raise DriftlineError(
                f"{self.state_file} is unreadable ({exc}); if no stack runs, delete it"
            ) from exc

    def _record(self, recorded: dict[str, Any]) -> None:
        write_json(self.state_file, recorded)

    def component_state(self, name: str) -> str:
        """``running``, ``dead`` or ``stale`` (the group id now belongs to another program)."""
        recorded = self.recorded()
        pgid = recorded.get("processes", {}).get(name)
        if pgid is None:
            return "not recorded"
        expected = recorded.get("identity", {}).get(name)
        leader = process_identity(pgid)
        if leader is None:
            # Linux never hands out a pid still in use as a process group id: members of the
            # group outliving its leader are ours
            return "running" if _group_alive(pgid) else "dead"
        if expected is None:  # recorded by an older driftline: trust the command line only
            ours = "airflow" in leader["cmdline"] or "mlflow" in leader["cmdline"]
        else:
            # pid + start time name one process for the life of the machine; the command
            # line is kept for messages only (the api-server renames itself with setproctitle)
            ours = leader["start_time"] == expected.get("start_time")
        if not ours:
            return "stale"
        return "running" if _group_alive(pgid) else "dead"

    def running(self) -> dict[str, int]:
        """Recorded components whose process group is alive and still the one started."""
        processes = self.recorded().get("processes", {})
        return {
            name: pgid
            for name, pgid in processes.items()
            if self.component_state(name) == "running"
        }

    def not_running(self) -> dict[str, str]:
        """Recorded components that are dead or whose record is stale, with that state."""
        states = {name: self.component_state(name) for name in self.recorded().get("processes", {})}
        return {name: state for name, state in states.items() if state != "running"}

    def check_ports(self) -> None:
        ports = {"AIRFLOW_PORT": self.port}
        if self.mlflow_port:
            ports["MLFLOW_PORT"] = self.mlflow_port
        if self.exporter_port:
            ports["DRIFTLINE_EXPORTER_PORT"] = self.exporter_port
        if self.serve_port:
            ports["DRIFTLINE_SERVE_PORT"] = self.serve_port
        for variable, port in ports.items():
            if not port_is_free(port):
                raise DriftlineError(
                    f"port {port} is already in use; free it or choose another with "
                    f"{variable}=<port> (e.g. `{variable}={port + 1} make up`)"
                )

    def migrate(self) -> None:
        self.settings.airflow_home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate")
        database = self.settings.airflow_home / "airflow.db"
        if (
            self.env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite")
            and database.exists()
        ):
            import sqlite3

            # write-ahead logging: the api-server, scheduler, dag-processor and triggerer share
            # this file; readers stop blocking writers (the mode is stored in the file)
            with sqlite3.connect(database) as connection:
                connection.execute("PRAGMA journal_mode=WAL")

    def ensure_passwords(self) -> dict[str, str]:
        """The accounts' passwords, generated once into a 0600 file before Airflow starts.

        Airflow's simple auth manager generates missing passwords itself and prints them into
        the api-server's log; with every user already in the file it never does.
        """
        passwords: dict[str, str] = {}
        if self.passwords_file.is_file():
            passwords = json.loads(self.passwords_file.read_text() or "{}")
        missing = [user for user in USERS if user not in passwords]
        for user in missing:
            passwords[user] = "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(16))
        if missing or self.passwords_file.stat().st_mode & 0o077:
            write_json(self.passwords_file, passwords, mode=0o600)
        return passwords

    def ensure_signing_key(self) -> str:
        """The key Airflow signs its execution-API tokens with (HS512), generated once into a
        0600 file: 64 random bytes. Left to itself Airflow writes a 16-byte key into
        airflow.cfg, and PyJWT warns on every token that it is below the 64 bytes RFC 7518
        recommends for SHA-512."""
        path = self.signing_key_file
        if path.is_file() and len(key := path.read_text().strip()) >= 64:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            return key
        key = secrets.token_urlsafe(64)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(key + "\n")
        path.chmod(0o600)
        return key

    def start(
        self,
        components: tuple[str, ...] | None = None,
        *,
        extra_env: dict[str, str] | None = None,
    ) -> dict[str, int]:
        """Start components in the background (one process group each) and record them.

        Default: every component. Components already running are refused; a partial start
        (``up`` restarting what died) keeps the records of the others.
        """
        wanted = components or self.default_components()
        alive = self.running()
        if set(wanted) & set(alive):
            raise DriftlineError(
                f"a stack is already running for {self.settings.home} "
                f"({', '.join(sorted(set(wanted) & set(alive)))}); `driftline down` stops it"
            )
        if not alive:
            self.check_ports()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ensure_passwords()
        env = {**self.env(), **(extra_env or {})}
        commands = {
            name: [str(Path(sys.executable).with_name("airflow")), name]
            for name in wanted
            if name in AIRFLOW_COMPONENTS
        }
        if "scheduler" in commands:
            # task processes fork from the scheduler's executor: start them warm (preload.py)
            commands["scheduler"] = [sys.executable, "-m", "driftline.preload", "scheduler"]
        recorded_ports = dict(self.recorded().get("worker_log_ports") or {})
        worker_env: dict[str, dict[str, str]] = {}
        for name in wanted:
            if name.startswith(CELERY_WORKER):
                # tasks fork from the worker's pool processes: warm too
                commands[name] = [
                    *(sys.executable, "-m", "driftline.preload", "celery", "worker"),
                    *("--celery-hostname", f"{name}@%h"),
                    *("--concurrency", os.environ.get("DRIFTLINE_CELERY_CONCURRENCY", "2")),
                ]
                recorded_ports.setdefault(name, free_port())
                worker_env[name] = {
                    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(recorded_ports[name])
                }
        if "mlflow-ui" in wanted and self.mlflow_port:
            commands["mlflow-ui"] = self.mlflow_command()
        if "exporter" in wanted and self.exporter_port:
            commands["exporter"] = [
                str(Path(sys.executable).with_name("driftline")),
                *("exporter", "--host", self.exporter_host, "--port", str(self.exporter_port)),
            ]
        if SERVE in wanted and self.serve_port:
            if alive and not port_is_free(self.serve_port):
                raise DriftlineError(
                    f"port {self.serve_port} (DRIFTLINE_SERVE_PORT) is already in use; "
                    "the scoring service cannot start again"
                )
            commands[SERVE] = [
                str(Path(sys.executable).with_name("driftline")),
                *("serve", "--host", "127.0.0.1", "--port", str(self.serve_port)),
            ]
        recorded = self.recorded() if alive else {}
        processes: dict[str, int] = {name: recorded["processes"][name] for name in alive}
        identity = {name: recorded.get("identity", {}).get(name) for name in alive}
        started: dict[str, int] = {}
        try:
            for name, command in commands.items():
                log = (self.log_dir / f"{name}.log").open("ab")
                process = subprocess.Popen(
                    command,
                    env={**env, **worker_env.get(name, {})},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                started[name] = process.pid  # a new session: pid == process group id
                processes[name] = process.pid
                identity[name] = process_identity(process.pid)
        finally:
            self._record(
                {
                    "processes": processes,
                    "identity": identity,
                    "port": self.port,
                    "mlflow_port": self.mlflow_port,
                    "exporter_port": self.exporter_port,
                    "serve_port": self.serve_port,
                    "side_ports": self.side_ports(),
                    "worker_log_ports": recorded_ports,
                }
            )
        return started

    def celery_workers(self) -> tuple[str, ...]:
        """The Celery worker components, when the stack runs the CeleryExecutor."""
        if self.env()["AIRFLOW__CORE__EXECUTOR"] != "CeleryExecutor":
            return ()
        count = int(os.environ.get("DRIFTLINE_CELERY_WORKERS", "2"))
        return tuple(f"{CELERY_WORKER}{index}" for index in range(1, count + 1))

    def default_components(self) -> tuple[str, ...]:
        mlflow = ("mlflow-ui",) if self.mlflow_port else ()
        exporter = ("exporter",) if self.exporter_port else ()
        serve = (SERVE,) if self.serve_port else ()
        return (*AIRFLOW_COMPONENTS, *self.celery_workers(), *mlflow, *exporter, *serve)

    def mlflow_command(self) -> list[str]:
        command = [str(Path(sys.executable).with_name("mlflow")), "server"]
        if self.mlflow_server and self.mlflow_basic_auth:
            backend, artifacts = self.mlflow_server
            command = [
                "env",
                f"MLFLOW_BACKEND_STORE_URI={backend}",
                "bash",
                str(REPO_ROOT / "deploy" / "mlflow" / "start-mlflow.sh"),
                "--artifacts-destination",
                artifacts,
                "--serve-artifacts",
            ]
        elif self.mlflow_server:
            backend, artifacts = self.mlflow_server
            command += [
                "--backend-store-uri",
                backend,
                "--artifacts-destination",
                artifacts,
                "--serve-artifacts",
            ]
        else:
            command += ["--backend-store-uri", self.settings.mlflow_tracking_uri]
        return [*command, "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1"]

    def _signal_and_wait(self, groups: dict[str, int], timeout: float) -> None:
        for pgid in groups.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for pgid in groups.values():
            while time.monotonic() < deadline:
                if not _group_alive(pgid):
                    break
                time.sleep(0.2)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)

    def stop_component(self, name: str, timeout: float = 30) -> None:
        """Stop one recorded component (fault drills: e.g. the MLflow server mid-run)."""
        pgid = self.recorded().get("processes", {}).get(name)
        if pgid is None:
            raise DriftlineError(f"no {name} recorded for {self.settings.home}")
        if self.component_state(name) == "running":
            self._signal_and_wait({name: pgid}, timeout)

    def kill_component(self, name: str) -> None:
        """SIGKILL one recorded component's process group, no grace (crash drills)."""
        pgid = self.recorded().get("processes", {}).get(name)
        if pgid is None:
            raise DriftlineError(f"no {name} recorded for {self.settings.home}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)

    def restart_component(self, name: str, extra_env: dict[str, str] | None = None) -> int:
        """Start one stopped component again (optionally with more environment, e.g. a test
        hook), recorded with its identity like every other start."""
        return self.start((name,), extra_env=extra_env)[name]

    def restart_mlflow(self) -> int:
        """Start the MLflow process again and record it."""
        recorded = self.recorded()
        log = (self.log_dir / "mlflow-ui.log").open("ab")
        process = subprocess.Popen(
            self.mlflow_command(),
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        recorded.setdefault("processes", {})["mlflow-ui"] = process.pid
        recorded.setdefault("identity", {})["mlflow-ui"] = process_identity(process.pid)
        self._record(recorded)
        return process.pid

    def stale_records(self) -> list[str]:
        """A message for each recorded group id that now belongs to another program."""
        recorded = self.recorded()
        return [
            f"{name}: process group {pgid} is no longer the one driftline started "
            f"(now: {(process_identity(pgid) or {}).get('cmdline', '?')[:120]!r}); "
            "not signalled, its record is removed"
            for name, pgid in recorded.get("processes", {}).items()
            if self.component_state(name) == "stale"
        ]

    def stop(self, timeout: float = 30) -> list[str]:
        """Stop every recorded process group that is still ours: SIGTERM, SIGKILL after
        ``timeout``. Stale records (the id now another program's) are dropped unsignalled."""
        groups = self.running()
        self._signal_and_wait(groups, timeout)
        if self.state_file.exists():
            self.state_file.unlink()
        return list(groups)

    # --- health and access ------------------------------------------------------------------

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_healthy(
        self,
        timeout: float = 240,
        components: tuple[str, ...] = ("scheduler", "triggerer", "dag_processor"),
    ) -> dict[str, Any]:
        """Wait until the API answers and the components report healthy."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            for name in self.recorded().get("processes", {}):
                if self.component_state(name) != "running":
                    tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise DriftlineError(f"{name} exited during start-up; its log ends:\n{tail}")
            last = self.health()
            if (
                last
                and all(
                    (last.get(component) or {}).get("status") == "healthy"
                    for component in components
                )
                and self.mlflow_healthy()
                and self.exporter_healthy()
                and self.serve_health() is not None
            ):
                return last
            time.sleep(2)
        mlflow = (
            ""
            if self.mlflow_healthy()
            else f"; the MLflow server at {self.mlflow_url} does not answer"
        )
        exporter = (
            ""
            if self.exporter_healthy()
            else f"; the exporter at {self.exporter_url}/health does not answer"
        )
        if self.serve_health() is None:
            mlflow += f"; the scoring service at {self.serve_url} does not answer"
        raise DriftlineError(
            f"the stack at {self.url} did not become healthy in {timeout:.0f} s: "
            f"{last}{mlflow}{exporter}"
        )

    def mlflow_healthy(self) -> bool:
        """The MLflow server this stack started answers its health check (True if none)."""
        return not self.mlflow_url or _answers(f"{self.mlflow_url}/health")

    def exporter_healthy(self) -> bool:
        """The Prometheus exporter this stack started answers /health (True if none)."""
        return not self.exporter_url or _answers(f"{self.exporter_url}/health")

    def serve_health(self) -> dict[str, Any] | None:
        """The scoring service's ``/health`` ({} when this stack runs none; None: no answer)."""
        if not self.serve_url:
            return {}
        try:
            with urllib.request.urlopen(f"{self.serve_url}/health", timeout=3) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_serving(self, timeout: float = 120) -> dict[str, Any]:
        """Wait until the scoring service has loaded every model's champion (``/ready``)."""
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.serve_url}/ready", timeout=3) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                body = error.read().decode(errors="replace")
            except (urllib.error.URLError, OSError) as error:
                body = str(error)
            time.sleep(1)
        raise DriftlineError(
            f"the scoring service at {self.serve_url} is not ready after {timeout:.0f} s: "
            f"{body}; see {self.log_dir}/{SERVE}.log"
        )

    def password(self, user: str) -> str:
        if not self.passwords_file.is_file():
            raise DriftlineError(
                f"no passwords yet at {self.passwords_file}; start the stack first"
            )
        return json.loads(self.passwords_file.read_text())[user]

    def token(self, user: str = "admin", password: str | None = None) -> str:
        body = json.dumps({"username": user, "password": password or self.password(user)}).encode()
        request = urllib.request.Request(
            f"{self.url}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["access_token"]

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        *,
        timeout: float = 60,
    ) -> tuple[int, Any]:
        """A JSON request to the REST API; returns (status, decoded body)."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw)
            except ValueError:
                return error.code, raw.decode(errors="replace")


# --- make up / make down ----------------------------------------------------------------------

FIRST_RUN_DAYS = 60
# the generated world ends this many days before today, leaving room for `make demo` to
# append its days (two per run) without stamping transactions in the future
DAYS_BEFORE_TODAY = 10


def up(
    *,
    port: int = 8080,
    mlflow_port: int | None = 5000,
    exporter_port: int | None = None,
    serve_port: int | None = None,
    model: str = "fraud_detection",
    world: dict[str, int] | None = None,
    days: int = FIRST_RUN_DAYS,
    timeout: float = 900,
    extra_env: dict[str, str] | None = None,
    mlflow_server: tuple[str, str] | None = None,
    mlflow_basic_auth: bool = False,
    say: Any = print,
) -> Stack:
    """Bring the stack up from nothing, or confirm it is up. Safe to run twice.

    The embedded profile by default; with the production settings in the environment
    (PostgreSQL, Redis, an MLflow tracking server given by ``mlflow_server``) the same path.
    """
    from datetime import UTC, datetime, timedelta

    from driftline import offline, registry
    from driftline.datagen import generate
    from driftline.feature_store import apply_repo, materialize_window

    settings = get_settings()
    stack = Stack(
        settings=settings,
        port=port,
        mlflow_port=mlflow_port,
        serve_port=serve_port,
        # `make up` unpauses every DAG (and so starts the drift watcher)
        extra_env={"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False", **(extra_env or {})},
        mlflow_server=mlflow_server,
        mlflow_basic_auth=mlflow_basic_auth,
        exporter_port=exporter_port,
    )
    for message in stack.stale_records():
        say(f"stale record in {stack.state_file}: {message}")
    if stack.running():
        recorded = stack.recorded()
        stack.port, stack.mlflow_port = recorded.get("port", port), recorded.get("mlflow_port")
        stack.exporter_port = recorded.get("exporter_port")
        stack.serve_port = recorded.get("serve_port")
        broken = stack.not_running()
        if not broken:
            say(f"driftline is already up for {settings.home}")
            say(access_summary(stack, first_start=False))
            return stack
        say(
            f"driftline is up for {settings.home} but {', '.join(sorted(broken))} "
            f"{'is' if len(broken) == 1 else 'are'} not running "
            f"({', '.join(f'{n}: {s}' for n, s in sorted(broken.items()))}); restarting only that"
        )
        stack.start(components=tuple(broken))
        stack.wait_healthy(timeout=timeout)
        say(access_summary(stack, first_start=False))
        return stack
    if stack.recorded():
        stack.state_file.unlink()  # nothing recorded is alive and ours: start afresh
    stack.check_ports()
    _preflight(stack, managed_mlflow=mlflow_port is not None)

    say("[1/6] Airflow metadata database, MLflow's tables")
    stack.migrate()
    registry.ensure_store(settings)
    if not offline.list_days(settings.offline_dir):
        today = datetime.now(UTC).date() - timedelta(days=DAYS_BEFORE_TODAY - 1)
        say(f"[2/6] generating {days} days of baseline transactions")
        result = generate(offline_dir=settings.offline_dir, days=days, today=today, **(world or {}))
        say(f"      {result.summary()}")
    else:
        say(f"[2/6] offline store already holds data in {settings.offline_dir}")
    say("[3/6] registering the Feast repo (feast apply)")
    apply_repo(settings)
    newest = offline.list_days(settings.offline_dir)[-1]
    start = datetime(newest.year, newest.month, newest.day, tzinfo=UTC)
    for result in materialize_window(start, start + timedelta(days=1), settings=settings):
        say(f"      {result.describe()}")

    first_start = not stack.passwords_file.exists()
    say(
        f"[4/6] starting Airflow on {stack.url}"
        + (f", the MLflow UI on {stack.mlflow_url}" if mlflow_port else "")
        + (f", the scoring service on {stack.serve_url}" if serve_port else "")
        + (f", the Prometheus exporter on {stack.exporter_url}" if exporter_port else "")
    )
    stack.start()
    try:
        stack.wait_healthy(timeout=timeout)
        if mlflow_basic_auth:
            # what airflow-init does: the workers' account, before any task reaches MLflow
            from driftline.mlflow_auth import ensure_account

            outcome = ensure_account(
                settings.mlflow_tracking_uri,
                admin=(
                    os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin",
                    os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", ""),
                ),
                username=os.environ.get("MLFLOW_TRACKING_USERNAME", ""),
                password=os.environ.get("MLFLOW_TRACKING_PASSWORD", ""),
            )
            say(f"      MLflow workers' account {outcome}")
        token = stack.token("admin")
        _wait_for_dags(
            stack,
            token,
            [f"{model}_retrain", f"{model}_drift_monitor", "feature_materialization"],
            timeout,
        )
        if registry.alias_version(model, registry.CHAMPION, settings) is None:
            say(f"[5/6] first retrain of {model}, so a champion exists (a few minutes)")
            run_id = _trigger_first_retrain(stack, token, f"{model}_retrain", timeout)
            state = _wait_for_run(stack, token, f"{model}_retrain", run_id, timeout)
            champion = registry.alias_version(model, registry.CHAMPION, settings)
            if state != "success" or champion is None:
                raise DriftlineError(
                    f"the first retrain ended {state} without a champion; see {stack.url}"
                    f"/dags/{model}_retrain and {stack.log_dir}"
                )
            say(f"      champion: {model} v{champion}")
        else:
            say(f"[5/6] {model} already has a champion")
        if stack.serve_url:
            stack.wait_serving(timeout=timeout)
            say(f"      the scoring service serves the champion at {stack.serve_url}")
    except BaseException:
        say(f"start-up failed; stopping what was started (logs stay in {stack.log_dir})")
        stack.stop()
        raise
    say("[6/6] ready")
    say(access_summary(stack, first_start=first_start))
    return stack


def _preflight(stack: Stack, *, managed_mlflow: bool) -> None:
    """Every service the settings name must answer before anything starts."""
    from driftline.preflight import probes

    with _environment(stack.env()):
        results = probes(stack.settings)
    failed = [
        p
        for p in results
        if not p.ok
        and not (
            managed_mlflow and p.setting == "MLFLOW_TRACKING_URI" and p.target.startswith("http")
        )
    ]
    if failed:
        raise DriftlineError(
            "cannot reach "
            + "; ".join(f"{p.service} ({p.setting}={p.target}): {p.detail}" for p in failed)
        )


def _feast_metrics_variables() -> list[str]:
    """The Prometheus multiprocess variables that this process's Feast import pointed at a
    temporary directory of its own (feast/metrics.py), which Feast removes when this process
    exits. A component inheriting them outlives `driftline up`, and with them a directory
    that is gone: the scoring service's /metrics would fail. Set outside, they are kept."""
    metrics = sys.modules.get("feast.metrics")
    if metrics is None or not getattr(metrics, "_owns_mp_dir", False):
        return []
    own = getattr(metrics, "_prometheus_mp_dir", None)
    return [
        variable
        for variable in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")
        if own and os.environ.get(variable) == own
    ]


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Any:
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _wait_for_dags(stack: Stack, token: str, dag_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body = stack.api("GET", "/api/v2/dags?limit=200", token=token)
        except OSError:  # a locked metadata DB outlasted the request: ask again
            status, body = 0, None
        if status == 200 and set(dag_ids) <= {d["dag_id"] for d in body["dags"]}:
            return
        time.sleep(3)
    raise DriftlineError(
        f"DAGs {dag_ids} were not parsed within {timeout:.0f} s; see {stack.log_dir}/dag-processor.log"
    )


FIRST_CHAMPION = "make up: first champion"


def _trigger_first_retrain(stack: Stack, token: str, dag_id: str, timeout: float) -> str:
    """Start the first retrain; its run id.

    The embedded stack's SQLite metadata DB can stay locked for a minute while the first
    scheduled tasks start: a request then waits out SQLite's 60 s busy timeout and answers 500,
    having created nothing. Until ``timeout``, a 5xx or an unanswered request is retried, and
    before each retry a run an earlier attempt did create (its answer lost) is looked for, so
    there is never a second first retrain."""
    deadline = time.monotonic() + timeout
    status, answer = 0, None
    while time.monotonic() < deadline:
        try:
            status, answer = stack.api(
                "POST",
                f"/api/v2/dags/{dag_id}/dagRuns",
                {"logical_date": None, "conf": {"reason": FIRST_CHAMPION}},
                token=token,
                timeout=90,  # past the server's 60 s busy timeout: its 500, not our give-up
            )
        except OSError as exc:
            status, answer = 0, f"no answer: {exc}"
        if status == 200:
            return answer["dag_run_id"]
        if 0 < status < 500:
            break
        time.sleep(5)
        try:
            listed, runs = stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", token=token)
        except OSError:
            continue
        if listed == 200:
            for run in runs["dag_runs"]:
                if (run.get("conf") or {}).get("reason") == FIRST_CHAMPION:
                    return run["dag_run_id"]
    raise DriftlineError(f"could not trigger the first retrain of {dag_id}: {status} {answer}")


def _wait_for_run(stack: Stack, token: str, dag_id: str, run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body = stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", token=token)
        except OSError:  # a locked metadata DB outlasted the request: ask again
            status, body = 0, None
        if status == 200 and body["state"] in ("success", "failed"):
            return body["state"]
        time.sleep(3)
    raise DriftlineError(f"{dag_id} run {run_id} did not finish within {timeout:.0f} s")


def access_summary(stack: Stack, *, first_start: bool) -> str:
    lines = [
        "",
        f"  Airflow UI   {stack.url}   (log in at {stack.url}/auth/login)",
    ]
    if stack.mlflow_url:
        lines.append(f"  MLflow UI    {stack.mlflow_url}")
    if stack.exporter_url:
        lines.append(f"  metrics      {stack.exporter_url}/metrics   (Prometheus exporter)")
    if stack.serve_url:
        lines.append(f"  scoring      {stack.serve_url}/v1/models   (README: Serving)")
    lines.append("  accounts     admin (administers), operator (triggers and clears runs)")
    if first_start and stack.passwords_file.exists():
        passwords = json.loads(stack.passwords_file.read_text())
        lines.append("  passwords    (shown once; kept in " + str(stack.passwords_file) + ")")
        lines += [f"               {user}: {password}" for user, password in passwords.items()]
    else:
        lines.append(f"  passwords    in {stack.passwords_file}")
    lines += ["  next         make demo   |   driftline status   |   make down", ""]
    return "\n".join(lines)


def down(say: Any = print) -> list[str]:
    """Stop exactly what `up` started (recorded process groups)."""
    settings = get_settings()
    stack = Stack(settings=settings)
    if not stack.recorded():
        say(f"nothing recorded as running for {settings.home}")
        return []
    for message in stack.stale_records():
        say(f"stale record in {stack.state_file}: {message}")
    stopped = stack.stop()
    say(f"stopped: {', '.join(stopped) or 'nothing was still running'}")
    return stopped


def component_health(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Each recorded component: its process state and, when the API answers, its health."""
    stack = Stack(settings=settings or get_settings())
    recorded = stack.recorded()
    if not recorded:
        return []
    stack.port = recorded.get("port", stack.port)
    health = stack.health() if stack.component_state("api-server") == "running" else None
    rows = []
    for name, pgid in recorded.get("processes", {}).items():
        state = stack.component_state(name)
        reported = (health or {}).get(name.replace("-", "_")) or {}
        if name == "api-server":
            reported = {"status": "healthy" if health else "not answering"}
        elif name == "mlflow-ui":
            stack.mlflow_port = recorded.get("mlflow_port")
            reported = {"status": "healthy" if stack.mlflow_healthy() else "not answering"}
        elif name == "exporter":
            stack.exporter_port = recorded.get("exporter_port")
            reported = {"status": "healthy" if stack.exporter_healthy() else "not answering"}
        elif name == SERVE:
            stack.serve_port = recorded.get("serve_port")
            served = stack.serve_health()
            # "degraded": alive, but a version failed to load or the registry is unreachable
            reported = {"status": "not answering" if served is None else served["status"]}
        rows.append(
            {
                "component": name,
                "process_group": pgid,
                "process": state,
                "health": reported.get("status", "-"),
                "last_heartbeat": reported.get(f"latest_{name.replace('-', '_')}_heartbeat"),
            }
        )
    return rows
