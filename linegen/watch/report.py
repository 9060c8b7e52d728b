"""`linegen report JOB`: one self-contained HTML file about a job, finished or still running.

Everything comes from the job's output root (local or S3), so it works from a laptop: committed
shards' stats (one row per engine batch: throughput, KV-cache and peak memory per worker, over
time), the recovery timeline (node losses, requeued and failed shards) from `_SUCCESS` or, while
the job runs, from `_progress.json`, the job's status (headline figures, the same as `linegen
monitor` and the dashboard: headline.py), its settings (job.json) and sample images from the
first committed shards. Charts are inline SVG (svg.py) and images data: URIs: no network needed.
"""
from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from linegen.cli.jobview import format_figure, money
from linegen.errors import UserError
from linegen.jobs import layout
from linegen.jobs.headline import FIGURES, figures
from linegen.jobs.progress import read_live
from linegen.jobs.remote.status import job_status, locate
from linegen.jobs.stats import read_stats_rows
from linegen.jobs.storage import StorageNotFound
from linegen.watch import svg

STATS_COLUMNS = ["worker", "node", "shard_id", "attempt", "images", "wall_s", "kv_cache_bytes",
                 "peak_memory_bytes", "started_at", "finished_at"]
SAMPLES = 24
BINS = 60  # images/s is counted in at most this many time bins over the job
BATCHES_PER_BIN = 2  # and a bin is at least this many batches long, so one wave is not a spike


@dataclass
class JobReport:
    job_id: str
    status: dict
    spec: dict
    batches: list[dict]  # committed stats rows
    timeline: list[dict]  # {"at", "event": node_lost|requeued|failed, "shard"?, "node"?}
    samples: list[tuple[bytes, str]] = field(default_factory=list)  # (PNG, caption)
    generated_at: float = field(default_factory=time.time)


def collect(ctx, job_id: str, samples: int = SAMPLES) -> JobReport:
    loc = locate(ctx, job_id)
    if loc.storage is None:
        raise UserError(loc.storage_error or f"job {job_id}: its output root is unknown; pass --out")
    status = job_status(ctx, job_id, loc=loc).to_dict()
    storage = loc.storage
    committed = sorted(layout.committed_shards(storage, job_id))
    batches = [r for sid in committed for r in read_stats_rows(storage, job_id, sid, STATS_COLUMNS)]
    summary = _json(storage, layout.success_key(job_id)) or {}
    live = read_live(storage, job_id) or {}
    timeline = summary.get("timeline_this_run") or live.get("timeline") or []
    spec = json.loads(loc.spec.to_json()) if loc.spec is not None else {}
    return JobReport(job_id, status, spec, batches, timeline, _samples(storage, job_id, committed, samples))


def _json(storage, key: str) -> dict | None:
    try:
        doc = json.loads(storage.get(key))
    except (StorageNotFound, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _samples(storage, job_id: str, committed: list[str], n: int) -> list[tuple[bytes, str]]:
    """PNGs of the first ``n`` images of the first committed shards (Parquet or WebDataset)."""
    from linegen.jobs.parquet import from_parquet_bytes
    from linegen.jobs.sink import committed_file, read_commit

    out: list[tuple[bytes, str]] = []
    for sid in committed:
        if len(out) >= n:
            break
        marker = read_commit(storage, job_id, sid)
        data = committed_file(storage, marker, "images")
        if marker.get("format", "parquet") == "parquet":
            t = from_parquet_bytes(data, columns=["image", "item_id"]).slice(0, n - len(out)).to_pydict()
            out += [(img["bytes"], str(item)) for img, item in zip(t["image"], t["item_id"])]
        else:
            import tarfile

            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for m in tar:
                    if m.name.endswith(".png") and len(out) < n:
                        out.append((tar.extractfile(m).read(), m.name[:-4]))
    return out


# -- charts --------------------------------------------------------------------------------

def _bytes(v: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.0f} B"


def charts(r: JobReport) -> list[svg.Chart]:
    times = [b["started_at"] for b in r.batches if b["started_at"]] + [t["at"] for t in r.timeline]
    ends = [b["finished_at"] for b in r.batches if b["finished_at"]] + [t["at"] for t in r.timeline]
    t0 = min(times) if times else r.generated_at
    t1 = max(ends) if ends else t0 + 1
    span = (0.0, max(1.0, t1 - t0))
    by_worker: dict[str, list[dict]] = {}
    for b in r.batches:  # workers are named linegen-JOB-worker-N: the legend needs only the end
        by_worker.setdefault(str(b["worker"] or "?").removeprefix(f"linegen-{r.job_id}-"), []).append(b)
    workers = sorted(by_worker)

    # images/s per worker: images finished in each time bin / the bin's width
    walls = sorted(b["finished_at"] - b["started_at"] for b in r.batches) or [0.0]
    nbins = max(1, min(BINS, int(span[1] / max(1e-9, BATCHES_PER_BIN * walls[len(walls) // 2]))))
    width = span[1] / nbins
    rate_lines = []
    for w in workers:
        bins = [0.0] * nbins
        for b in by_worker[w]:
            bins[min(nbins - 1, int((b["finished_at"] - t0) / width))] += b["images"] or 0
        first = min(b["started_at"] for b in by_worker[w]) - t0
        last = max(b["finished_at"] for b in by_worker[w]) - t0
        pts = [((i + 0.5) * width, c / width) for i, c in enumerate(bins) if first - width <= i * width <= last]
        rate_lines.append(svg.Line(w, pts))
    kv = [svg.Line(w, [(b["finished_at"] - t0, float(b["kv_cache_bytes"] or 0)) for b in by_worker[w]])
          for w in workers]
    peak = [svg.Line(w, [(b["finished_at"] - t0, float(b["peak_memory_bytes"] or 0)) for b in by_worker[w]])
            for w in workers]

    # shards: cumulative commits (a shard commits right after its last batch) and recovery events
    shard_end: dict[str, float] = {}
    for b in r.batches:
        shard_end[b["shard_id"]] = max(shard_end.get(b["shard_id"], 0.0), b["finished_at"])
    done = sorted(shard_end.values())
    shards = [svg.Line("shards committed", [(t - t0, i + 1) for i, t in enumerate(done)], step=True)] if done else []
    events: dict[str, list[float]] = {}
    for e in sorted(r.timeline, key=lambda e: e["at"]):
        events.setdefault(e["event"], []).append(e["at"] - t0)
    for kind, label in (("requeued", "requeued (node lost)"), ("failed", "failed attempts"),
                        ("node_lost", "nodes lost")):
        if kind in events:
            shards.append(svg.Line(label, [(x, i + 1) for i, x in enumerate(events[kind])], step=True,
                                   dashed=kind != "node_lost"))
    marks = [svg.Mark(e["at"] - t0, f"node lost: {e.get('node', '?')}") for e in r.timeline
             if e["event"] == "node_lost"]
    return [
        svg.Chart("Images/s per worker", rate_lines, span, lambda v: f"{v:g}", marks),
        svg.Chart("KV-cache bytes per worker (per wave)", kv, span, _bytes, marks),
        svg.Chart("Peak memory per worker (per wave)", peak, span, _bytes, marks),
        svg.Chart("Shards committed, retries and node losses", shards, span, lambda v: f"{v:g}", marks),
    ]


# -- the page ------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.figs{display:flex;flex-wrap:wrap;gap:10px}.fig{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.fig b{display:block;font-size:20px}.fig span{font-size:12px;color:#666}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(110px,1fr));gap:8px}
.grid figure{margin:0;text-align:center;font-size:11px;color:#555}.grid img{width:100%;image-rendering:pixelated;border:1px solid #ccc}
.muted{color:#777;font-size:12px}"""


def _row(k: str, v) -> str:
    if k.endswith("_at") and isinstance(v, (int, float)):
        v = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(v))
    if isinstance(v, (dict, list)):
        v = json.dumps(v, sort_keys=True)
    return f"<tr><th>{escape(str(k))}</th><td>{escape('' if v is None else str(v))}</td></tr>"


def render_html(r: JobReport) -> str:
    st = r.status
    values = figures(st)
    figs = "".join(f'<div class="fig"><span>{escape(f.title)}</span><b>{escape(format_figure(f, values[f.key]))}</b></div>'
                   for f in FIGURES)
    im, sh = st.get("images") or {}, st.get("shards") or {}
    cost = st.get("cost") or {}
    cost_rows = "".join(_row(dev, f"{secs:.1f} device-s") for dev, secs in
                        sorted((cost.get("device_seconds_by_device") or {}).items()))
    cost_rows += _row("cost so far", money(cost.get("usd"))) + _row("per 1k images", money(cost.get("usd_per_1k_images")))
    cost_rows += _row("projected for the whole job", money(cost.get("projected_usd")))
    if cost.get("unpriced_devices"):
        cost_rows += _row("no price for", ", ".join(cost["unpriced_devices"]))
    counts: dict[str, int] = {}
    for e in r.timeline:
        counts[e["event"]] = counts.get(e["event"], 0) + 1
    settings = "".join(_row(k, v) for k, v in sorted(r.spec.items()) if k not in ("manifest_sha256",))
    grid = "".join(f'<figure><img alt="{escape(c)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                   f"<figcaption>{escape(c)}</figcaption></figure>" for png, c in r.samples)
    charts_html = "\n".join(svg.render(c) for c in charts(r))
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r.generated_at))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>linegen job {escape(r.job_id)}</title>
<style>{CSS}</style></head><body>
<h1>linegen job {escape(r.job_id)} — {escape(str(st.get('state')))}</h1>
<div class="muted">{escape(str(st.get('out') or ''))} · model {escape(str(st.get('model')))} · cache
{escape(str(st.get('cache_policy')))} {escape(str(st.get('cache_ratio') or ''))} · report made {when}
{'' if st.get('state') == 'SUCCEEDED' else ' · so far: committed shards only'}</div>
<h2>Headline</h2><div class="figs">{figs}</div>
<p>{im.get('done')} of {im.get('total')} images, {sh.get('done')} of {sh.get('total')} shards;
{len(r.batches)} engine batches committed. Recovery: {counts.get('node_lost', 0)} node(s) lost,
{counts.get('requeued', 0)} shard(s) requeued after a node loss, {counts.get('failed', 0)} failed attempt(s).</p>
<h2>Over time</h2>
{charts_html}
<h2>Cost</h2><table>{cost_rows}</table>
<h2>Settings</h2><table>{settings}</table>
<h2>Sample images</h2><div class="grid">{grid or '<p class="muted">no committed images yet</p>'}</div>
</body></html>
"""


def write_report(ctx, job_id: str, html: str) -> str:
    page = render_html(collect(ctx, job_id))
    try:
        Path(html).write_text(page, encoding="utf-8")
    except OSError as e:
        raise UserError(f"{html}: cannot write the report: {e.strerror or e}") from None
    return html
