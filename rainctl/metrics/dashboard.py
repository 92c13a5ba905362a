"""The Grafana dashboard of the metrics: templates/grafana-dashboard.json.j2, rendered with
the name of the Prometheus data source it selects by default (`rainctl metrics dashboard`).
"""

from __future__ import annotations

from rainctl.templating import render

TEMPLATE = "grafana-dashboard.json.j2"
DEFAULT_DATASOURCE = "Prometheus"


def dashboard_json(datasource: str = DEFAULT_DATASOURCE) -> str:
    return render(TEMPLATE, datasource=datasource)
