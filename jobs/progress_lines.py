"""Plain progress lines for runs nobody watches: `nohup`, cron, CI, a submitted job's Ray log.

A live bar writes nothing useful to a file, so when the output is not a terminal `linegen run`
prints one line every ``--log-every`` seconds (and when the job finishes); a submitted job's
driver prints the same lines into its Ray log, which `linegen logs` shows as they are:

    progress 2026-12-05T10:32:01Z job prompts-3f9c2a1b7e04: 120/400 images (30%), 3.52 images/s, ETA 1m20s, $0.0031 so far

The line starts with a fixed word and an ISO time so `grep progress` and log tools can parse it.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

from linegen.workers.units import duration, money

DEFAULT_EVERY_S = 30.0
PREFIX = "progress"


def progress_line(job_id: str, p, now: float | None = None) -> str:
    """One line from a `jobs.progress.Progress` (or anything with its fields)."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    total = p.images_total or 0
    pct = f" ({100 * p.images_done / total:.0f}%)" if total else ""
    parts = [f"{p.images_done}/{total} images{pct}"]
    parts.append(f"{p.images_per_s:.2f} images/s" if p.images_per_s else "images/s n/a")
    if p.eta_s is not None:
        parts.append(f"ETA {duration(p.eta_s)}")
    parts.append(f"{money(p.usd or 0)} so far")
    if getattr(p, "waiting", ""):
        parts.append(p.waiting)
    if getattr(p, "failed", None):
        parts.append(f"{len(p.failed)} shard(s) failed")
    return f"{PREFIX} {stamp} job {job_id}: " + ", ".join(parts)


class ProgressLog:
    """A progress callback that writes `progress_line` at most every ``every_s`` seconds, the
    first report and the last ("finished") always."""

    def __init__(self, job_id: str, write: Callable[[str], None], every_s: float = DEFAULT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        if not every_s > 0:
            raise ValueError("--log-every must be > 0 seconds")
        self.job_id, self.write, self.every_s, self.clock = job_id, write, float(every_s), clock
        self.last: float | None = None

    def __call__(self, p) -> None:
        now = self.clock()
        final = p.event == "finished"
        if self.last is not None and now - self.last < self.every_s and not final:
            return
        self.last = now
        self.write(progress_line(self.job_id, p))


def readable(chunks: Iterable[str], job_id: str) -> Iterator[str]:
    """A driver's log as people read it (`linegen logs`): its JSON event lines (`{"progress": ...}`,
    `{"summary": ...}`) become plain lines; everything else passes as it is. ``chunks`` may cut
    lines anywhere (a streamed log)."""
    pending = ""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            yield _readable_line(line, job_id) + "\n"
    if pending:
        yield _readable_line(pending, job_id)


def _readable_line(line: str, job_id: str) -> str:
    import json
    from types import SimpleNamespace

    if not line.startswith("{"):
        return line
    try:
        doc = json.loads(line)
    except ValueError:
        return line
    if not isinstance(doc, dict):
        return line
    try:
        if isinstance(doc.get("progress"), dict):
            p = {"images_done": 0, "images_total": 0, "images_per_s": 0.0, "eta_s": None, "usd": None,
                 "event": "", "waiting": "", "failed": [], **doc["progress"]}
            text = progress_line(job_id, SimpleNamespace(**p))
            return f"{text} [{p['event']}]" if p["event"] else text
        if isinstance(doc.get("summary"), dict):
            s = doc["summary"]
            images = s.get("images")
            images = {"done": images, "total": images} if isinstance(images, int) else (images or {})
            cost = (s.get("cost") or {}).get("usd")
            return (f"finished: {images.get('done')}/{images.get('total')} images, "
                    f"{money(cost) if cost is not None else 'cost n/a'}")
    except (TypeError, ValueError, KeyError):
        return line
    return line
