"""docs/metrics.md lists exactly the metrics the exporter can export, and the Grafana
dashboard (rainctl metrics dashboard) is valid JSON whose queries name only those."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from prometheus_client import ProcessCollector
from prometheus_client.core import Metric
from typer.testing import CliRunner

from rainctl.cli.app import app
from rainctl.metrics.collector import families
from rainctl.metrics.dashboard import dashboard_json
from tests.unit.test_metrics_collector import full_answer, ipvs_entries

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
_TABLE_ROW = re.compile(r"^\| `([a-z_:]+)` \| (counter|gauge|histogram) \|")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exportable() -> list[Metric]:
    """Every family the exporter can export: a full answer, an IPVS table, the daemon's
    process metrics."""
    process = ProcessCollector(pid=os.getpid, registry=None)
    return [*families(full_answer(), ipvs_entries()), *process.collect()]


def queried_name(metric: Metric) -> str:
    """The name a query uses for the family as a whole (counters with `_total`)."""
    return f"{metric.name}_total" if metric.type == "counter" else metric.name


def sample_names() -> set[str]:
    names: set[str] = set()
    for metric in exportable():
        base = metric.name
        names.update(f"{base}{suffix}" for suffix in _SUFFIXES[metric.type])
        if metric.type == "histogram":
            names.add(base)
    return names


def documented() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = _TABLE_ROW.match(line)
        if match:
            assert match[1] not in rows, f"{match[1]} listed twice"
            rows[match[1]] = match[2]
    return rows


def test_the_documentation_lists_exactly_what_the_exporter_exports() -> None:
    exported = {queried_name(metric): metric.type for metric in exportable()}
    assert len(exported) > 60
    assert documented() == exported


# ---- the dashboard ---------------------------------------------------------------------

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads: its identifiers that are not functions,
    keywords, label names or values, grouping lists or range durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\b\d+(?:\.\d+)?[a-z]*\b", " ", text)  # numbers, durations (offset 5m)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match[0].lower() in _KEYWORDS:
            continue
        names.add(match[0])
    return names


def test_metric_names_are_read_from_promql() -> None:
    expression = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x=~"b|c"}[5m]))) '
        "/ on (instance) group_left max without (le) (d_total offset 5m) > bool 1"
    )
    assert metric_names(expression) == {"a_bucket", "d_total"}


def test_the_dashboard_is_json_whose_queries_use_exported_metrics() -> None:
    dashboard = json.loads(dashboard_json('Prom "main" {{x}}'))
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == 'Prom "main" {{x}}'
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    expressions.append(variables["instance"]["query"].removeprefix("label_values(").split(",")[0])
    assert len(expressions) > 20
    exported = sample_names()
    used: set[str] = set()
    for expression in expressions:
        names = metric_names(expression)
        assert names, expression
        assert names <= exported, (expression, names - exported)
        used |= names
    assert "rainctl_token_rotation_seconds_bucket" in used
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_documented_queries_use_exported_metrics() -> None:
    text = DOC.read_text(encoding="utf-8")
    block = text.split("```promql\n", 1)[1].split("```", 1)[0]
    queries = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(queries) >= 4
    for query in queries:
        assert metric_names(query) <= sample_names(), query


@pytest.mark.parametrize("output", [True, False])
def test_the_dashboard_command(tmp_path: Path, output: bool) -> None:
    path = tmp_path / "dashboard.json"
    arguments = ["metrics", "dashboard", "--datasource", "Mimir"]
    result = CliRunner().invoke(app, [*arguments, "--output", str(path)] if output else arguments)
    assert result.exit_code == 0, result.output
    text = path.read_text(encoding="utf-8") if output else result.stdout
    assert json.loads(text)["templating"]["list"][0]["current"]["text"] == "Mimir"


def test_the_dashboard_command_refuses_an_empty_datasource() -> None:
    result = CliRunner().invoke(app, ["metrics", "dashboard", "--datasource", " "])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "rainctl: error: --datasource ' ': must be a data source's name"
    ]
