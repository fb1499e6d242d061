"""``driftline``: every stage runnable outside Airflow.

A failure ends in one line on stderr (``driftline: error: ...``) and an exit code by its
kind, set in one place (:func:`main`): 2 bad input or configuration (fix it, do not retry),
3 a service unavailable (retry later), 4 a conflict (the state moved: re-read, then
decide), 1 a demo step that misbehaved. Bad input writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from driftline.errors import DriftlineError
from driftline.settings import get_settings

app = typer.Typer(
    help="driftline keeps production ML models fresh. Every stage, outside Airflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    typer.echo(f"driftline: error: {message}", err=True)
    raise typer.Exit(code=2)


def _parse_moment(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{name} {value!r} is not a date or time; use YYYY-MM-DD or an ISO timestamp")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
def env() -> None:
    """Print `export` lines for the settings (use: eval "$(driftline env)")."""
    for key, value in sorted(get_settings().airflow_env().items()):
        typer.echo(f"export {key}={shlex.quote(value)}")


@app.command()
def generate(
    scenario: Annotated[
        str, typer.Option(help="baseline, covariate_shift or concept_drift")
    ] = "baseline",
    days: Annotated[int, typer.Option(help="how many days to append")] = 1,
    start: Annotated[
        str | None, typer.Option(help="first day (YYYY-MM-DD) of an empty store")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed; fixed per offline store")] = 42,
    cards: Annotated[int, typer.Option(help="number of cards")] = 2000,
    merchants: Annotated[int, typer.Option(help="number of merchants")] = 300,
    corrupt: Annotated[
        bool, typer.Option(help="append a broken batch (fault injection for demos)")
    ] = False,
) -> None:
    """Append DAYS days of SCENARIO transactions and their features to the offline store."""
    from driftline.datagen import generate as run

    result = run(
        offline_dir=get_settings().offline_dir,
        scenario=scenario,
        days=days,
        start=start,
        seed=seed,
        n_cards=cards,
        n_merchants=merchants,
        corrupt=corrupt,
    )
    typer.echo(result.summary())


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def feast(ctx: typer.Context) -> None:
    """Run the Feast CLI on driftline's feature repo, e.g. `driftline feast apply`."""
    from driftline.feature_store import feast_command

    raise typer.Exit(code=feast_command(list(ctx.args)))


@app.command()
def materialize(
    start: Annotated[str | None, typer.Option(help="window start (default: newest day)")] = None,
    end: Annotated[str | None, typer.Option(help="window end (default: start + 1 day)")] = None,
    overlap_minutes: Annotated[int, typer.Option(help="extra minutes before start")] = 60,
) -> None:
    """Materialize a window of every feature view into the online store."""
    from driftline import offline
    from driftline.feature_store import materialize_window

    settings = get_settings()
    begin = _parse_moment(start, "--start")
    if begin is None:
        days = offline.list_days(settings.offline_dir)
        if not days:
            _fail(f"the offline store {settings.offline_dir} is empty; run `driftline generate`")
        begin = datetime(days[-1].year, days[-1].month, days[-1].day, tzinfo=UTC)
    finish = _parse_moment(end, "--end") or begin + timedelta(days=1)
    if overlap_minutes < 0:
        _fail(f"--overlap-minutes {overlap_minutes} must be zero or more")
    results = materialize_window(
        begin, finish, overlap=timedelta(minutes=overlap_minutes), settings=settings
    )
    for result in results:
        typer.echo(result.describe())


def _as_of(value: str | None) -> datetime:
    return _parse_moment(value, "--as-of") or datetime.now(UTC)


def _actor() -> str:
    import getpass

    return f"user:{getpass.getuser()}"


@app.command()
def retrain(
    model: Annotated[str, typer.Option(help="model spec name")] = "fraud_detection",
    as_of: Annotated[
        str | None,
        typer.Option(help="as-of date, UTC midnight (default: today, capped at the newest data)"),
    ] = None,
    window_days: Annotated[int | None, typer.Option(help="days of matured labels")] = None,
    dry_run: Annotated[bool, typer.Option(help="never move an alias")] = False,
    reason: Annotated[str, typer.Option(help="recorded in the audit log")] = "",
) -> None:
    """Every retrain stage in one process: build, validate, train, evaluate, decide, promote."""
    from driftline import retrain as stages
    from driftline.lineage import RunContext

    context = RunContext(
        dag_id="cli",
        run_id=f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%S}",
        triggered_by=_actor(),
        reason=reason,
        dry_run=dry_run,
    )
    from driftline.clock import retrain_as_of

    moment = retrain_as_of(model, end_date=_parse_moment(as_of, "--as-of"), reference=None)
    result = stages.run_all(model, as_of=moment, context=context, window_days=window_days)
    decision = result["decision"]
    typer.echo(f"{decision['outcome']}: challenger v{decision['challenger_version']} — ")
    for line in decision["reasons"]:
        typer.echo(f"  - {line}")
    typer.echo(result["outcome"]["message"])


@app.command()
def monitor(
    model: Annotated[str, typer.Option(help="model spec name")] = "fraud_detection",
    as_of: Annotated[str | None, typer.Option(help="as-of date or time (default: now)")] = None,
) -> None:
    """Run the drift monitor once (no asset event: that is the DAG's announce_drift)."""
    from driftline.drift import monitor as run_monitor
    from driftline.lineage import RunContext
    from driftline.specs import load_spec

    context = RunContext(run_id=f"monitor-{datetime.now(UTC):%Y%m%dT%H%M%S}", triggered_by=_actor())
    result = run_monitor(load_spec(model), as_of=_as_of(as_of), context=context)
    typer.echo(f"{result.verdict}: " + ("; ".join(result.reasons) or "nothing drifted"))
    for name, column in sorted(result.columns.items()):
        flag = "DRIFT" if column["drifted"] else "ok"
        typer.echo(
            f"  {name:30} {column['method']:14} {column['score']:.3f} / {column['threshold']}  {flag}"
        )
    typer.echo(f"report: {result.report_uri}")


@app.command("drift-event")
def drift_event(
    model: Annotated[str, typer.Option(help="model the drift concerns")] = "fraud_detection",
    reason: Annotated[str, typer.Option(help="what was seen")] = "",
    share_drifted: Annotated[
        float | None, typer.Option(help="share of drifted features, 0..1")
    ] = None,
    feature: Annotated[list[str] | None, typer.Option(help="a drifted feature; repeatable")] = None,
    source: Annotated[str, typer.Option(help="who reports it")] = "cli",
) -> None:
    """Report drift as an outside system would: a new row in the drift-event table.

    The AssetWatcher of drift://MODEL picks it up and starts MODEL_retrain.
    """
    from driftline.events import payload_problem, raise_event

    payload = {"reason": reason, "top_features": feature or []}
    if share_drifted is not None:
        payload["share_drifted"] = share_drifted
    problem = payload_problem(payload)
    if problem:
        _fail(f"drift event payload rejected: {problem}")
    event_id = raise_event(model, payload, source=source)
    typer.echo(f"drift event {event_id} recorded for {model} (status new)")


events_app = typer.Typer(
    help="The drift-event queue: list events with their status and reason; requeue one.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(events_app, name="events")


@events_app.callback()
def events(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option(
            help="only events in this status (new, emitted, consumed, suppressed, "
            "rejected); repeatable"
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="one model (default: all)")] = None,
    limit: Annotated[int, typer.Option(help="newest N events", min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """The drift-event queue: list events with their status and reason; requeue one.

    Without a subcommand, lists the newest events (e.g. `driftline events --status rejected`).
    """
    if ctx.invoked_subcommand is not None:
        return
    from driftline import monitoring
    from driftline.status import event_rows, render_events

    unknown = [s for s in status or [] if s not in monitoring.EVENT_STATUSES]
    if unknown:
        _fail(f"--status {unknown[0]!r} is not one of {', '.join(monitoring.EVENT_STATUSES)}")
    rows = event_rows(model, statuses=tuple(status or ()), limit=limit)
    typer.echo(json.dumps(rows, indent=2, default=str) if as_json else render_events(rows))


@events_app.command("requeue")
def events_requeue(
    event_id: Annotated[int, typer.Option("--id", help="the drift event to put back")],
    reason: Annotated[str, typer.Option(help="why; recorded in the audit log")] = "",
) -> None:
    """Put a rejected, suppressed or stuck (emitted) drift event back to new; audited."""
    from driftline.events import requeue

    row = requeue(event_id, actor=_actor(), reason=reason)
    typer.echo(f"drift event {event_id} of {row['model']} is new again; the watcher delivers it")


@events_app.command("grant-writer")
def events_grant_writer(
    role: Annotated[str, typer.Option("--role", help="the outside systems' database role")],
) -> None:
    """Let ROLE insert drift events (model, source, payload) and nothing else (PostgreSQL)."""
    from driftline.monitoring import grant_event_writer

    for statement in grant_event_writer(role):
        typer.echo(statement)


@app.command()
def status(
    model: Annotated[str | None, typer.Option(help="one model (default: every spec)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """The champion, the last decisions with their reasons, and the open drift events."""
    from driftline.stack import component_health
    from driftline.status import render, render_components
    from driftline.status import status as collect

    statuses = collect(model)
    components = None if as_json else component_health()
    if as_json:
        typer.echo(json.dumps(statuses, indent=2, default=str))
        return
    typer.echo(render_components(components or []))
    typer.echo(render(statuses))


@app.command()
def promote(
    version: Annotated[str, typer.Option(help="the version to make champion")],
    reason: Annotated[str, typer.Option(help="why; recorded in the audit log")],
    model: Annotated[str, typer.Option(help="registered model")] = "fraud_detection",
) -> None:
    """Human override: promote a version (compare-and-set, audited like the DAG's)."""
    from driftline.promotion import manual_promote

    result = manual_promote(model, version, reason=reason, actor=_actor())
    typer.echo(result.message)


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="why; recorded in the audit log")],
    model: Annotated[str, typer.Option(help="registered model")] = "fraud_detection",
) -> None:
    """Human override: serve the champion before this one (walks the history back).

    A second rollback goes one further back or is refused with the reason; a version that
    was rolled back is never served by a rollback again.
    """
    from driftline.promotion import rollback as roll_back

    result = roll_back(model, reason=reason, actor=_actor())
    typer.echo(result.message)


@app.command()
def reconcile(
    model: Annotated[
        list[str] | None, typer.Option(help="a model; repeatable (default: every spec)")
    ] = None,
    lease_seconds: Annotated[
        float | None,
        typer.Option(
            help="treat pending promotions older than this as abandoned (default: their "
            "recorded lease); 0 once you know the promoter is dead",
            min=0,
        ),
    ] = None,
) -> None:
    """Finish or undo promotions a killed promoter left, by what MLflow serves.

    Exit 0 when every model's monitoring store agrees with MLflow's champion alias; exit 4
    naming any promotion still in flight (within its lease).
    """
    from driftline.errors import Conflict
    from driftline.promotion import reconcile as settle_all
    from driftline.specs import load_specs

    models = model or [spec.name for spec in load_specs(get_settings().models_dir)]
    results = settle_all(models, actor=_actor(), stale_after=lease_seconds)
    for result in results:
        typer.echo(result.message)
    busy = [r for r in results if r.outcome == "in_flight"]
    if busy:
        raise Conflict(f"{len(busy)} promotion(s) still in flight; see above")


rollout_app = typer.Typer(
    help="Canary rollouts: see one, pause or resume its ramp, abort it.", no_args_is_help=True
)
app.add_typer(rollout_app, name="rollout")


@rollout_app.command("status")
def rollout_status(
    model: Annotated[str, typer.Option(help="registered model")] = "fraud_detection",
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """The open (or last) rollout: step, share, and the guards over the current period."""
    from driftline import rollout

    entry = rollout.status(model)
    if as_json:
        typer.echo(json.dumps(entry, indent=2, default=str))
        return
    typer.echo(f"== {model}")
    typer.echo("\n".join(rollout.render_status(entry)))


@rollout_app.command("pause")
def rollout_pause(
    model: Annotated[str, typer.Option(help="registered model")] = "fraud_detection",
    reason: Annotated[str, typer.Option(help="why; recorded in the audit log")] = "",
) -> None:
    """Stop ramping: the candidate keeps its share; a broken guard still aborts. Audited."""
    from driftline import rollout

    typer.echo(rollout.pause(model, actor=_actor(), reason=reason).message)


@rollout_app.command("resume")
def rollout_resume(
    model: Annotated[str, typer.Option(help="registered model")] = "fraud_detection",
    reason: Annotated[str, typer.Option(help="why; recorded in the audit log")] = "",
) -> None:
    """Ramp again from the current share. Audited."""
    from driftline import rollout

    typer.echo(rollout.resume(model, actor=_actor(), reason=reason).message)


@rollout_app.command("abort")
def rollout_abort(
    reason: Annotated[str, typer.Option(help="why; recorded in the audit log")],
    model: Annotated[str, typer.Option(help="registered model")] = "fraud_detection",
) -> None:
    """End the rollout: candidate alias and rollout_share cleared, champion untouched. Audited."""
    from driftline import rollout

    typer.echo(rollout.abort(model, reason=reason, actor=_actor()).message)


@app.command()
def up(
    port: Annotated[int, typer.Option(envvar="AIRFLOW_PORT", help="Airflow UI/API port")] = 8080,
    mlflow_port: Annotated[int, typer.Option(envvar="MLFLOW_PORT", help="MLflow UI port")] = 5000,
    exporter_port: Annotated[
        int, typer.Option(envvar="DRIFTLINE_EXPORTER_PORT", help="Prometheus exporter port")
    ] = 9108,
    serve_port: Annotated[
        int, typer.Option(envvar="DRIFTLINE_SERVE_PORT", help="scoring service port")
    ] = 8000,
) -> None:
    """Start the embedded stack (data, Feast, Airflow, MLflow UI, a first champion, the
    scoring service)."""
    from driftline.stack import up as start

    start(
        port=port,
        mlflow_port=mlflow_port,
        exporter_port=exporter_port,
        serve_port=serve_port,
        say=typer.echo,
    )


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="address to listen on (DRIFTLINE_SERVE_HOST, 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (DRIFTLINE_SERVE_PORT, 8000)")] = None,
    workers: Annotated[
        int | None, typer.Option(help="uvicorn worker processes (DRIFTLINE_SERVE_WORKERS, 1)")
    ] = None,
) -> None:
    """Serve every model's champion (and canary candidate) over HTTP: FastAPI on uvicorn."""
    from driftline.serving.app import run

    if workers is not None and workers < 1:
        _fail(f"--workers {workers} must be 1 or more")
    run(host=host, port=port, workers=workers)


@app.command()
def down() -> None:
    """Stop what `driftline up` started (by recorded process groups, never by name)."""
    from driftline.stack import down as stop

    stop(say=typer.echo)


@app.command()
def exporter(
    host: Annotated[
        str, typer.Option(envvar="DRIFTLINE_EXPORTER_HOST", help="address to listen on")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="DRIFTLINE_EXPORTER_PORT", help="port to listen on")
    ] = 9108,
    cache_seconds: Annotated[
        float,
        typer.Option(
            envvar="DRIFTLINE_EXPORTER_CACHE_SECONDS",
            help="read the monitoring store at most once per this many seconds",
            min=0,
        ),
    ] = 10.0,
) -> None:
    """Serve the monitoring store's state as Prometheus metrics at /metrics until stopped."""
    from driftline.exporter import serve

    url = get_settings().monitoring_db_url
    try:
        serve(host=host, port=port, url=url, cache_seconds=cache_seconds)
    except OSError as exc:
        _fail(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another with "
            "DRIFTLINE_EXPORTER_PORT / DRIFTLINE_EXPORTER_HOST (or --port / --host)"
        )
    except KeyboardInterrupt:
        pass


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="model spec name")] = "fraud_detection",
) -> None:
    """The whole loop against the running stack; exits non-zero if a step misbehaves."""
    from driftline.demo import Demo
    from driftline.stack import Stack

    stack = Stack(settings=get_settings())
    recorded = stack.recorded()
    if not stack.running() or not recorded:
        _fail(f"no running stack for {get_settings().home}; run `make up` first")
    stack.port, stack.mlflow_port = recorded["port"], recorded.get("mlflow_port")
    ok = Demo(stack, model=model, say=typer.echo).run()
    raise typer.Exit(code=0 if ok else 1)


@app.command()
def simulate(
    scenario: Annotated[
        str, typer.Option(help="timeline file, e.g. simulations/concept_drift.yaml")
    ],
    spec: Annotated[
        list[str] | None,
        typer.Option(help="run in a stack of its own under this model spec; give twice to compare"),
    ] = None,
    out: Annotated[
        str | None, typer.Option(help="directory for result.json, report.html and the plot")
    ] = None,
) -> None:
    """Drive a timeline of synthetic days through the stack; score it against two baselines."""
    from pathlib import Path

    from driftline.simulate import simulate as run

    result = run(
        Path(scenario),
        specs=[Path(s) for s in spec or []],
        out_dir=Path(out) if out else None,
        say=typer.echo,
    )
    for run_result in result.get("runs") or [result]:
        typer.echo(json.dumps(run_result["summary"], indent=2))
    if result.get("comparison"):
        typer.echo(json.dumps(result["comparison"], indent=2))


@app.command()
def quarantine(
    day: Annotated[str, typer.Option(help="the day (YYYY-MM-DD) of the broken delivery")],
    reason: Annotated[str, typer.Option(help="why; kept beside the data")],
) -> None:
    """Move a broken day out of the offline store (kept in _quarantine/ for inspection)."""
    from datetime import date

    from driftline import offline

    try:
        target = offline.quarantine_day(get_settings().offline_dir, date.fromisoformat(day), reason)
    except (ValueError, DriftlineError) as exc:
        _fail(f"--day {day!r}: {exc}")
    typer.echo(f"quarantined {day} to {target}")


@app.command()
def check() -> None:
    """Check that every service the settings name can be reached (exit 3 naming any that cannot)."""
    from driftline.preflight import check as check_services
    from driftline.preflight import probes

    results = probes()
    for probe in results:
        typer.echo(probe.describe())
    check_services(results=results)


@app.command("check-secrets")
def check_secrets(
    env_file: Annotated[
        Path | None,
        typer.Option("--env-file", help="a dotenv file to check instead of the environment"),
    ] = None,
) -> None:
    """Refuse weak secrets (placeholders, short, shared, not a Fernet key): exit 2 naming each."""
    from driftline.secret_check import check_secrets as check

    checked = check(env_file)
    typer.echo(f"check-secrets: {checked} secrets hold")


@app.command("new-env")
def new_env(
    out: Annotated[Path, typer.Option("--out", help="where to write it")] = Path(".env"),
    example: Annotated[Path, typer.Option("--example")] = Path(".env.example"),
) -> None:
    """Write a production .env from .env.example with every secret generated (mode 0600)."""
    from driftline.secret_check import write_new_env

    target = write_new_env(example, out)
    typer.echo(f"wrote {target} (0600); review the non-secret values before `docker compose up`")


@app.command("mlflow-account")
def mlflow_account() -> None:
    """Create the workers' account on a basic-auth MLflow server, or set its password.

    As MLFLOW_AUTH_ADMIN_USERNAME (default admin) / MLFLOW_AUTH_ADMIN_PASSWORD, for the
    account MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD on MLFLOW_TRACKING_URI.
    """
    from driftline.mlflow_auth import ensure_account

    admin_password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    if not admin_password:
        _fail("MLFLOW_AUTH_ADMIN_PASSWORD is not set (MLFLOW_ADMIN_PASSWORD in .env)")
    username = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    outcome = ensure_account(
        get_settings().mlflow_tracking_uri,
        admin=(os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin", admin_password),
        username=username,
        password=os.environ.get("MLFLOW_TRACKING_PASSWORD", ""),
    )
    typer.echo(f"MLflow account {username!r} {outcome}")


@app.command()
def settings(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show where driftline keeps its state."""
    values = {k: str(v) for k, v in vars(get_settings()).items()}
    if as_json:
        typer.echo(json.dumps(values, indent=2))
    else:
        for key, value in values.items():
            typer.echo(f"{key:22} {value}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("driftline").setLevel(logging.INFO)
    try:
        app()
    except DriftlineError as exc:
        # the one place a kind becomes an exit code: 2 invalid, 3 unavailable, 4 conflict
        typer.echo(f"driftline: error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
