"""Evaluate every panel of linegen's Grafana dashboard on a real Prometheus, as Grafana would.

Variables are resolved the way Grafana resolves them (a `label_values(...)` query through the
HTTP API; a textbox's default; "All" as the variable's allValue), substituted into each target's
expression with Grafana's built-ins ($__range: the time range, $__rate_interval), and each target
is sent as a range query over the job's time span: what a panel draws.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>\w+)\)$")


@dataclass
class PanelResult:
    title: str
    expr: str
    series: int


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):  # $job_id before a shorter prefix of it
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def resolve_variables(prom, dashboard: dict, job_id: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for var in dashboard["templating"]["list"]:
        name, kind = var["name"], var["type"]
        if kind == "datasource":
            continue
        if kind == "textbox":
            values[name] = var["query"]
            continue
        m = _LABEL_VALUES.match(var["query"]["query"])
        assert m, f"variable {name}: not a label_values() query: {var['query']['query']}"
        found = prom.label_values(m["label"], substitute(m["match"], values))
        if name == "job_id":
            assert job_id in found, f"variable job_id: {job_id} not among {found}"
            values[name] = job_id
        elif var.get("includeAll"):
            values[name] = var["allValue"]  # Grafana's default for these: All
        else:
            assert found, f"variable {name}: no values"
            values[name] = found[0]
    return values


def evaluate(prom, dashboard: dict, job_id: str, start: float, end: float) -> list[PanelResult]:
    """Every target of every panel, with the series count it returned over [start, end]."""
    values = resolve_variables(prom, dashboard, job_id)
    values["__range"] = f"{max(1, int(end - start) + 1)}s"
    values["__rate_interval"] = "10s"  # Grafana: at least 4 scrape intervals (1 s here), Ray reports every 2 s
    out = []
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            expr = substitute(t["expr"], values)
            assert "$" not in expr, f"panel '{panel['title']}': unsubstituted variable in {expr}"
            out.append(PanelResult(panel["title"], expr, len(prom.query_range(expr, start, end))))
    return out
