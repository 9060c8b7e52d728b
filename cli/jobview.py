"""Rich renderings of remote jobs (status, list, monitor) and the small formatters they share."""
from __future__ import annotations


from linegen.workers.units import duration, money, rate  # noqa: F401 - the one home of these formats

STATE_STYLE = {
    "SUCCEEDED": "green", "RUNNING": "cyan", "PENDING": "yellow", "SCHEDULED": "blue",
    "WAITING": "blue", "FAILED": "red", "CANCELLED": "magenta", "INCOMPLETE": "yellow",
    "UNKNOWN": "dim", "STOPPED": "magenta", "DAMAGED": "bold red",
}


def state_text(state: str):
    from rich.text import Text

    return Text(state, style=STATE_STYLE.get(state, ""))


def counts(doc: dict, short: bool = False) -> str:
    sh, im = doc.get("shards") or {}, doc.get("images") or {}
    if sh.get("total") is None and im.get("total") is None:
        return "n/a"
    if short:
        return f"{im.get('done', 0)}/{im.get('total', '?')} img, {sh.get('done', 0)}/{sh.get('total', '?')} sh"
    return f"{sh.get('done', 0)}/{sh.get('total', '?')} shards, {im.get('done', 0)}/{im.get('total', '?')} images"


def bar(doc: dict, width: int = 24):
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    frac = doc.get("progress")
    grid = Table.grid(padding=(0, 1))
    if frac is None:
        grid.add_row("n/a")
        return grid
    grid.add_row(ProgressBar(total=1.0, completed=float(frac), width=width), f"{100 * float(frac):5.1f}%")
    return grid


def cost_line(cost: dict | None) -> str:
    if not cost:
        return "n/a"
    parts = [money(cost.get("usd"))]
    if cost.get("usd_per_1k_images") is not None:
        parts.append(f"{money(cost['usd_per_1k_images'])} per 1k images")
    if cost.get("projected_usd") is not None and cost.get("projected_usd") != cost.get("usd"):
        parts.append(f"projected {money(cost['projected_usd'])} for the whole job")
    if cost.get("unpriced_devices"):
        parts.append(f"no price for {', '.join(cost['unpriced_devices'])} (give one with --price)")
    return "; ".join(parts)


def status_table(doc: dict):
    from rich.table import Table

    t = Table(show_header=False, box=None, padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("job", f"{doc['job_id']}")
    state = state_text(doc["state"])
    if doc.get("reason"):
        state.append(f"  {doc['reason']}", style="")
    t.add_row("state", state)
    if doc.get("model"):
        cache = doc.get("cache_policy") or ""
        if doc.get("cache_ratio"):
            cache += f" {doc['cache_ratio']}"
        t.add_row("model / cache", f"{doc['model']} / {cache}")
    t.add_row("progress", bar(doc))
    t.add_row("done", counts(doc))
    im = doc.get("images") or {}
    if doc.get("images_committed") is not None and doc["images_committed"] != im.get("done"):
        t.add_row("committed", f"{doc['images_committed']} images (the rest of done is decoded, not committed yet)")
    workers = doc.get("workers")
    if workers:
        t.add_row("workers", f"{workers.get('placed', 0)} placed, {workers.get('pending', 0)} pending"
                  + (f" (each needs {workers['needs']})" if workers.get("needs") else ""))
    speed = rate(doc.get("images_per_s"))
    if doc.get("eta_s") is not None:
        speed += f", ETA {duration(doc['eta_s'])}"
    t.add_row("speed", speed)
    t.add_row("cost so far" if doc["state"] != "SUCCEEDED" else "cost", cost_line(doc.get("cost")))
    sched = doc.get("schedule") or {}
    if sched.get("start_at_text"):
        t.add_row("start at", sched["start_at_text"])
    if sched.get("after"):
        t.add_row("after", f"job {sched['after']} (cancelled if it fails)")
    if doc.get("out"):
        t.add_row("output", f"{doc['out'].rstrip('/')}/{doc['job_id']}")
    if doc.get("cluster"):
        t.add_row("cluster", doc["cluster"])
    attempts = doc.get("attempts") or []
    if attempts:
        t.add_row("attempts", ", ".join(f"{a['submission_id']} ({a.get('state') or a['status']})" for a in attempts))
    for e in doc.get("errors") or []:
        if e != doc.get("reason"):
            t.add_row("error", e)
    return t


def jobs_table(docs: list[dict], title: str | None = None, wide: bool = False):
    """The `list` table. Narrow (the default, fits 80 columns): job and state whole, done with its
    percentage, ETA and cost; each job's note folds onto a line of its own under the row. ``wide``:
    also a progress bar and images/s, the note in a column."""
    from rich.table import Table

    from linegen.cli.render import whole_column

    if not wide:
        t = Table(title=title, expand=False, show_lines=False)
        whole_column(t, "job", [d["job_id"] for d in docs])
        whole_column(t, "state", [d["state"] for d in docs])
        for name in ("done", "ETA", "cost"):
            t.add_column(name, overflow="fold")
        for d in docs:
            im = d.get("images") or {}
            pct = f" {100 * float(d['progress']):.0f}%" if d.get("progress") is not None else ""
            done = f"{im.get('done', 0)}/{im.get('total', '?')}{pct}" if im.get("total") is not None else "n/a"
            t.add_row(d["job_id"], state_text(d["state"]), done,
                      duration(d.get("eta_s")) if d.get("eta_s") is not None else "",
                      money((d.get("cost") or {}).get("usd")))
            note = _note(d)
            if note:
                t.add_row("", "", f"[dim]{note}[/dim]", "", "")  # folds in the widest column, never cuts ids
        return t
    t = Table(title=title, expand=False)
    whole_column(t, "job", [d["job_id"] for d in docs])
    whole_column(t, "state", [d["state"] for d in docs])
    for name in ("progress", "done", "speed", "ETA", "cost", "note"):
        t.add_column(name, overflow="fold")
    for d in docs:
        note = _note(d)
        t.add_row(d["job_id"], state_text(d["state"]), bar(d, 10), counts(d, short=True), rate(d.get("images_per_s")),
                  duration(d.get("eta_s")) if d.get("eta_s") is not None else "", money((d.get("cost") or {}).get("usd")),
                  note)
    return t


def format_figure(f, v: float | None) -> str:
    """How monitor prints a figure (the dashboard formats by the same unit ids)."""
    if v is None:
        return "n/a"
    if f.unit == "s":
        return duration(v)
    if f.unit == "currencyUSD":
        return money(v)
    return f"{v:,.0f}" if float(v).is_integer() or v >= 100 else f"{v:.2f}"


def _note(d: dict) -> str:
    note = d.get("reason") or ""
    sched = d.get("schedule") or {}
    if not note and sched.get("after") and d["state"] not in ("SUCCEEDED",):
        note = f"after {sched['after']}"
    attempts = d.get("attempts") or []
    if len(attempts) > 1:
        note = (note + "; " if note else "") + f"{len(attempts)} attempts"
    return note
