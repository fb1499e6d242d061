"""``driftline``: every stage runnable outside Airflow.

Bad input ends in one line on stderr naming the argument and what is allowed, and exit
code 2; nothing is written.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from datetime import UTC, datetime, timedelta
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
) -> None:
    """Append DAYS days of SCENARIO transactions and their features to the offline store."""
    from driftline.datagen import generate as run

    try:
        result = run(
            offline_dir=get_settings().offline_dir,
            scenario=scenario,
            days=days,
            start=start,
            seed=seed,
            n_cards=cards,
            n_merchants=merchants,
        )
    except DriftlineError as exc:
        _fail(str(exc))
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
    try:
        results = materialize_window(
            begin, finish, overlap=timedelta(minutes=overlap_minutes), settings=settings
        )
    except DriftlineError as exc:
        _fail(str(exc))
    for result in results:
        typer.echo(result.describe())


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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except DriftlineError as exc:
        typer.echo(f"driftline: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
