"""What a manifest would cost on a given device, before running it (`linegen cost --estimate`).

cost = images / (images per device-second) / 3600 x $/device-hour. The throughput comes, first
found, from:

1. a job's own stats (``--from-job JOB``): images / device-seconds of its committed shards;
2. finished jobs under the output root (``--out`` / config) with the same model, cache policy and
   ratio that ran on the same device (their ``_SUCCESS`` summaries), the most recent first;
3. ``linegen/cost/throughput.json``: rows measured by our benchmarks (model, device, cache policy,
   ratio, images/s, batch, source, date); a row is only ever written by a measured run;

and the answer says which. The throughput is looked up before the manifest is read, so a missing
measurement is reported at once, however large the manifest. Without any of them there is no estimate: the answer says that no
measurement exists for that model/device/cache instead of guessing one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from linegen.cost.prices import PriceTable, canonical_device
from linegen.errors import UserError
from linegen.jobs import layout
from linegen.jobs.manifest import Conditioning, read_manifest, total_items
from linegen.jobs.plan import shard_index
from linegen.jobs.progress import read_progress
from linegen.jobs.spec import read_spec
from linegen.jobs.summary import count_of, read_summary
from linegen.settings.cache_choice import CacheChoice
from linegen.settings.model_choice import ModelChoice
from linegen.workers.cache import DEFAULT_RATIO

TABLE_PATH = Path(__file__).resolve().parent / "throughput.json"  # package data


def _row_cache(policy: Any, ratio: Any) -> CacheChoice:
    """A measured row's cache setting (benchmark rows record a ratio as text or a number)."""
    return CacheChoice(str(policy), None if ratio in (None, "") else str(ratio))


def load_table(path: Path | str | None = None) -> list[dict]:
    p = Path(path) if path else TABLE_PATH
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise UserError(f"{p}: not valid JSON ({e})") from None
    rows = data.get("rows", data) if isinstance(data, dict) else data
    return [r for r in rows if isinstance(r, dict) and r.get("images_per_s")]


def from_table(model: str, device: str, cache: CacheChoice, rows: list[dict]) -> dict | None:
    matches = [r for r in rows if r.get("model") == model and canonical_device(str(r.get("device"))) == device
               and cache.same_budget(_row_cache(r.get("cache_policy"), r.get("ratio")))]
    if not matches:
        return None
    best = max(matches, key=lambda r: float(r["images_per_s"]))
    return {"images_per_device_s": float(best["images_per_s"]), "kind": "benchmark",
            "source": (f"benchmark table {TABLE_PATH.name}: {best.get('model')} on {best.get('device')}, "
                       f"cache {best.get('cache_policy')} {best.get('ratio') or ''}".rstrip()
                       + f", batch {best.get('batch')}, measured {best.get('date')} ({best.get('source')})"),
            "row": best}


def _device_of(device_seconds: dict[str, float]) -> str | None:
    names = {canonical_device(d) for d in device_seconds if d}
    return names.pop() if len(names) == 1 else None


def from_job(storage, job_id: str, device: str, cache: CacheChoice, model: str) -> dict:
    p = read_progress(storage, job_id, with_stats=True, live=False)
    if p.spec is None and p.summary is None:
        raise UserError(f"--from-job {job_id}: no such job under the output root")
    secs = sum(p.device_seconds.values())
    if not secs or not p.images_done:
        raise UserError(f"--from-job {job_id}: the job has no committed shards with stats yet")
    ran_on = _device_of(p.device_seconds)
    if ran_on != device:
        raise UserError(f"--from-job {job_id} ran on {', '.join(sorted(p.device_seconds)) or 'unknown'}, not {device}; "
                        "its throughput says nothing about that device")
    notes = []
    if p.spec is not None:
        if p.spec.model.name != model:
            notes.append(f"it used model {p.spec.model.name}, not {model}")
        if not cache.same_budget(p.spec.cache):
            notes.append(f"it used cache {p.spec.cache.policy} {p.spec.cache.ratio or ''}".rstrip())
    images = p.images_done
    return {"images_per_device_s": images / secs, "kind": "job-stats",
            "source": f"measured: stats of job {job_id} ({images} images, {secs:.1f} device-seconds)"
                      + (f"; note: {'; '.join(notes)}" if notes else ""), "row": None}


def finished_job_rates(storage, model: str, cache: CacheChoice) -> dict[str, dict]:
    """Device -> the throughput of the most recent finished job under the output root with this
    model and cache that ran on that one device (one listing of the root)."""

    found: dict[str, tuple] = {}
    for key in storage.list(""):
        if key.count("/") != 1 or not key.endswith("/_SUCCESS"):
            continue
        job_id = key.split("/", 1)[0]
        try:
            summary = read_summary(storage, job_id)
        except UserError:  # a broken summary is simply not used
            continue
        if summary is None:
            continue
        try:
            spec = read_spec(storage, job_id)
        except UserError:  # a damaged job folder is simply not used
            continue
        if spec is None or spec.model.name != model:
            continue
        if not cache.same_budget(spec.cache):
            continue
        device = _device_of(summary.get("device_seconds_by_device") or {})
        if device is None or not summary.get("images_per_device_s"):
            continue
        entry = (summary.get("finished_at") or 0, job_id, summary)
        found[device] = max(found.get(device, entry), entry)
    return {device: {"images_per_device_s": float(s["images_per_device_s"]), "kind": "job-stats",
                     "source": f"measured: job {job_id} ({count_of(s.get('images'))} images, "
                               f"{float(s.get('device_seconds') or 0):.1f} device-seconds)", "row": None}
            for device, (_, job_id, s) in found.items()}


def from_finished_jobs(storage, model: str, device: str, cache: CacheChoice) -> dict | None:
    return finished_job_rates(storage, model, cache).get(device)


def estimate(manifest: str, model: str, gpu: str, *, cache: str = "full", cache_ratio: str | None = None,
             gpus: int = 1, prices: dict[str, float] | None = None, storage=None, from_job_id: str | None = None,
             s3_endpoint_url: str | None = None, table: list[dict] | None = None) -> dict:
    """The estimate document. ``throughput`` is None (and ``reason`` says why) when nothing was
    measured for this model, device and cache."""

    if gpus < 1:
        raise UserError(f"--gpus must be >= 1, got {gpus}")
    spec = ModelChoice(name=model, random_weights=True).spec()
    device = canonical_device(gpu)
    choice = CacheChoice(cache, cache_ratio)
    choice.build()  # a bad policy or ratio is an error before anything is looked up
    price_table = PriceTable.builtin().with_overrides(prices or None)
    price = price_table.lookup(device)
    if price is None:
        price_table.usd_per_hour(device)  # raises the "no price for device" message
    doc: dict[str, Any] = {
        "manifest": manifest, "images": {"done": None, "total": None}, "model": model, "device": device, "gpus": gpus,
        "cache_policy": cache, "cache_ratio": (cache_ratio or DEFAULT_RATIO) if cache != "full" else None,
        "price": {"usd_per_hour": price.usd_per_hour, "unit": price.unit, "source": price.source, "note": price.note},
        "throughput": None, "reason": None, "device_hours": None, "usd": None, "usd_per_1k_images": None,
        "wall_hours": None,
    }
    tp = None
    if from_job_id:
        if storage is None:
            raise UserError("--from-job needs the job's output root: pass --out (or set [output] out)")
        tp = from_job(storage, from_job_id, device, choice, model)
    if tp is None and storage is not None:
        tp = from_finished_jobs(storage, model, device, choice)
    if tp is None:
        tp = from_table(model, device, choice, load_table() if table is None else table)
    if tp is None:
        cache_text = cache + (f" {doc['cache_ratio']}" if cache != "full" else "")
        doc["reason"] = (f"no measured throughput exists for {model} on {device} with cache {cache_text}: "
                         f"nothing in {TABLE_PATH.name}"
                         + (" and no matching finished job under the output root" if storage is not None else "")
                         + f"; measure it on a {device} (`python -m linegen.benchmarks.throughput --model {model} "
                         "--device cuda --write`, or a small `linegen submit` there and then "
                         "`--from-job JOB`) rather than trust a guess")
        # The missing measurement is the answer, even for a manifest that cannot be read; but a
        # readable one still says how many images it holds.
        try:
            doc["images"]["total"] = total_items(read_manifest(manifest, Conditioning.of(spec),
                                                               endpoint_url=s3_endpoint_url))
        except UserError:
            pass
        return doc
    images = total_items(read_manifest(manifest, Conditioning.of(spec), endpoint_url=s3_endpoint_url))
    doc["images"] = {"done": None, "total": images}  # the shape of every count (jobs.summary)
    rate = tp["images_per_device_s"]
    device_s = images / rate
    usd = device_s / 3600 * price.usd_per_hour
    doc.update({
        "throughput": {"images_per_device_s": rate, "kind": tp["kind"], "source": tp["source"]},
        "device_hours": device_s / 3600, "usd": usd,
        "usd_per_1k_images": usd / images * 1000 if images else None,
        "wall_hours": device_s / 3600 / gpus,
    })
    return doc


def measured_rates(model: str, cache: CacheChoice, storage=None, table: list[dict] | None = None) -> list[dict]:
    """Every device with a measured throughput for ``model`` and ``cache``: a finished job under
    the output root first, else the benchmark table; one entry per device."""

    rows = load_table() if table is None else table
    found = finished_job_rates(storage, model, cache) if storage is not None else {}
    for dev in sorted({canonical_device(str(r.get("device"))) for r in rows if r.get("device")} - set(found)):
        tp = from_table(model, dev, cache, rows)
        if tp is not None:
            found[dev] = tp
    return [{"device": dev, **tp} for dev, tp in sorted(found.items())]


def dry_run(job, *, prices: dict[str, float] | None = None) -> dict:
    """What `linegen run --dry-run` prints for a planned (not recorded) job: items, shards, what is
    already committed, and time and cost on every device whose throughput was measured."""

    spec, plan = job.spec, job.shards
    committed = layout.committed_shards(job.storage, spec.job_id) if read_spec(job.storage, spec.job_id) else set()
    done = sum(plan.size_of(i) for i in map(shard_index, committed) if i is not None)
    left = plan.items - done
    workers = spec.max_workers or spec.workers
    doc: dict[str, Any] = {
        "dry_run": True, "job_id": spec.job_id, "out": f"{spec.out.rstrip('/')}/{spec.job_id}",
        "manifest": spec.manifest, "rows": len(plan.rows),
        # the shape of every count (jobs.summary): done = committed already
        "images": {"done": done, "total": plan.items}, "shards": {"done": len(committed), "total": len(plan)},
        "images_left": left,
        "shard_size": spec.shard_size, "fingerprint": job.fingerprint, "model": spec.model.name,
        "cache_policy": spec.cache.policy, "cache_ratio": spec.cache.ratio, "device": spec.model.device,
        "estimates": [], "estimate_note": None,
    }
    # --device cpu runs on CPUs, cuda on GPUs; auto on whatever the cluster has: show every device
    device = spec.model.device
    kinds = {"cpu"} if device == "cpu" and not spec.gpus_per_worker else {"gpu"} if device.startswith("cuda") \
        else {"cpu", "gpu"}
    cpu = canonical_device("cpu")
    rates = [r for r in measured_rates(spec.model.name, spec.cache, job.storage)
             if ("cpu" if r["device"] == cpu else "gpu") in kinds]
    table = PriceTable.builtin().with_overrides(prices or spec.prices or None)
    for r in rates:
        rate = r["images_per_device_s"]
        device_s = left / rate
        price = table.lookup(r["device"])
        usd = device_s / 3600 * price.usd_per_hour if price is not None else None
        doc["estimates"].append({
            "device": r["device"], "images_per_device_s": rate, "source": r["source"],
            "device_hours": device_s / 3600, "usd": usd,
            "usd_per_1k_images": (usd / left * 1000) if usd is not None and left else None,
            "workers": workers, "wall_hours": device_s / 3600 / workers if workers else None,
        })
    if not doc["estimates"]:
        doc["estimate_note"] = (f"no measured throughput for {spec.model.name} with cache {spec.cache.policy} on "
                                f"{' or '.join(sorted(kinds)).upper()}: no time or cost estimate (measure one with "
                                "a small job, or python -m linegen.benchmarks.throughput)")
    return doc
