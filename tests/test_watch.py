"""The metrics registry, the Grafana dashboard built from it, the headline figures shared by
`monitor`, the dashboard and the report, and the report's SVG charts (no Ray, no job: fast).
The dashboard against a real Prometheus and a real job is in test_elastic.py; the report of real
jobs (local, S3, running, in headless Chromium) in test_jobs.py and test_elastic.py."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from linegen.jobs import headline
from linegen.watch import dashboard, svg
from linegen.workers import metrics

LINEGEN = str(Path(sys.executable).parent / "linegen")


def _exprs(doc: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]


def test_every_dashboard_query_reads_a_registered_series_or_a_ray_node_series() -> None:
    doc = dashboard.build()
    known = {s.exported for s in metrics.SERIES.values()} | set(dashboard.RAY_NODE_SERIES)
    used: set[str] = set()
    for title, expr in _exprs(doc):
        names = set(re.findall(r"\bray_[a-z_]+(?=\{)", expr))  # a series, not the ray_io_cluster label
        assert names, f"{title}: reads no series: {expr}"
        assert names <= known, f"{title}: unknown series {names - known}"
        used |= names
    # every series we record is on the dashboard but two: the dashboard's images/s is the rate of
    # the images counter (the gauge is the last wave's, for ad-hoc queries), and tokens
    unused = {s.exported for s in metrics.SERIES.values()} - used
    assert unused == {"ray_linegen_tokens_generated_total", "ray_linegen_images_per_s"}, unused
    titles = [p["title"] for p in doc["panels"] if p["type"] != "row"]
    assert len(titles) == len(set(titles)), titles
    names = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "job_id", "SessionName", "Cluster", headline.PRICE_VAR} <= names
    assert all('job_id="$job_id"' in e for t, e in _exprs(doc)), "a panel not filtered by the job"


def test_a_renamed_series_breaks_the_build_not_a_panel(monkeypatch: pytest.MonkeyPatch) -> None:
    series = dict(metrics.SERIES)
    series["linegen_kv_cache_bytez"] = series.pop("linegen_kv_cache_bytes")
    monkeypatch.setattr(metrics, "SERIES", series)
    with pytest.raises(KeyError, match="linegen_kv_cache_bytes"):
        dashboard.build()


def test_shipped_dashboard_is_the_generated_one_and_the_cli_writes_it(tmp_path: Path) -> None:
    assert dashboard.SHIPPED.read_text() == dashboard.dumps(dashboard.build()), \
        "linegen/watch/linegen-dashboard.json is stale: run `linegen dashboard --out linegen/watch/linegen-dashboard.json`"
    out = tmp_path / "d.json"
    r = subprocess.run([LINEGEN, "dashboard", "--out", str(out), "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["panels"] == [p["title"] for p in dashboard.build()["panels"] if p["type"] != "row"]
    assert out.read_text() == dashboard.SHIPPED.read_text()
    r = subprocess.run([LINEGEN, "dashboard", "--out", str(tmp_path / "no" / "d.json")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot write the dashboard" in r.stderr, r.stderr


def test_headline_figures_one_formula_in_python_and_promql() -> None:
    doc = {"images": {"done": 300, "total": 1000}, "images_per_s": 7.0, "workers": {"placed": 2, "pending": 1},
           "cost": {"usd": 0.6, "device_seconds": 720.0}}
    v = headline.figures(doc)
    assert v == {"images_done": 300, "images_per_s": 7.0, "eta_s": 100.0, "workers_placed": 2,
                 "workers_pending": 1, "usd": 0.6, "usd_per_1k_images": 2.0}
    assert headline.figures({"images": {"done": 0, "total": 10}, "images_per_s": 0.0})["eta_s"] is None
    eta = next(f for f in headline.FIGURES if f.key == "eta_s").promql()
    flat = re.sub(r"\{[^}]*\}|[()]", "", eta)  # without selectors and parentheses: the formula's shape
    assert flat == ("clamp_minmaxray_linegen_images_total - maxray_linegen_images_done / "
                    "sumrateray_linegen_images_generated_total[$__rate_interval] > 0, 0"), flat
    # the driver's live ETA, `status` and `cost` use the same functions
    from linegen.cost.job_cost import job_cost

    assert headline.eta_s(1000, 300, 7.0) == 100.0
    assert job_cost({"cpu": 3600.0}, 2000, {"CPU": 1.0})["usd_per_1k_images"] == pytest.approx(0.5)


def test_monitor_shows_the_headline_row() -> None:
    from rich.console import Console

    from linegen.cli.monitor import render

    job = {"job_id": "job-a", "state": "RUNNING", "images": {"done": 300, "total": 1000}, "shards": {"done": 3, "total": 10},
           "images_per_s": 7.0, "workers": {"placed": 2, "pending": 1}, "cost": {"usd": 0.6, "device_seconds": 720.0}}
    console = Console(width=250, record=True)
    console.print(render({"cluster": "http://h:8265", "nodes": [], "linegen_jobs": [job]}))
    text = console.export_text()
    assert "headline (as on the Grafana dashboard)" in text
    for f in headline.FIGURES:
        assert f.title in text, f.title
    assert "1m40s" in text and "$0.6000" in text and "$2.00" in text, text


def test_svg_chart_is_wellformed_with_series_marks_and_legend() -> None:
    chart = svg.Chart("Images/s per worker", [svg.Line("w0", [(0, 1.0), (10, 3.0)]), svg.Line("w1", [(5, 2.0)])],
                      (0.0, 12.0), marks=[svg.Mark(6.0, "node lost: gpu-1")])
    root = ET.fromstring(svg.render(chart))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}polyline")) == 1 and len(root.findall(f"{ns}circle")) == 1
    assert any(e.get("class") == "mark" for e in root.iter(f"{ns}line"))
    assert "w1" in "".join(root.itertext())
    assert svg.nice_ticks(0, 7.3) == [0, 2, 4, 6, 8]


def test_report_of_a_job_with_nothing_committed_yet_says_so() -> None:
    from linegen.watch.report import JobReport, render_html

    page = render_html(JobReport("j", {"state": "WAITING", "images": {"done": 0, "total": 10}}, {}, [], []))
    assert page.count("<svg") == 4 and page.count("no data yet") == 4 and "no committed images yet" in page
