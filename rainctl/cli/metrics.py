"""`rainctl metrics dashboard`: the Grafana dashboard of the metrics endpoint (docs/metrics.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rainctl.errors import OptionError
from rainctl.metrics.dashboard import DEFAULT_DATASOURCE, dashboard_json

metrics_app = typer.Typer(
    help="The Prometheus metrics: a Grafana dashboard for them (docs/metrics.md).",
    no_args_is_help=True,
)


@metrics_app.command()
def dashboard(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the dashboard here instead of standard output."),
    ] = None,
    datasource: Annotated[
        str,
        typer.Option(
            "--datasource", help="Name of the Grafana data source (Prometheus) it selects."
        ),
    ] = DEFAULT_DATASOURCE,
) -> None:
    """Write a Grafana dashboard (JSON, to import) of the cluster's metrics."""
    if not datasource.strip() or not datasource.isprintable():
        raise OptionError(f"--datasource {datasource!r}: must be a data source's name")
    text = dashboard_json(datasource)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        raise OptionError(f"--output {output}: cannot write: {error.strerror or error}") from error


def register(app: typer.Typer) -> None:
    app.add_typer(metrics_app, name="metrics")
