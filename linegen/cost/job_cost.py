"""What a job costs: device-seconds from its stats x the price table's $/device-hour.

CPU workers are priced per vCPU-hour for one vCPU per worker (a lower bound). A device with no
price is listed as unpriced, never guessed.
"""
from __future__ import annotations

from linegen.cost.prices import PriceTable
from linegen.jobs.headline import usd_per_1k_images


def job_cost(device_seconds: dict[str, float], images: int, overrides: dict[str, float] | None = None) -> dict:
    table = PriceTable.builtin().with_overrides(overrides)
    usd, unknown, used = 0.0, [], {}
    for dev, secs in device_seconds.items():
        price = table.lookup(dev)
        if price is None:
            unknown.append(dev)
            continue
        usd += secs / 3600 * price.usd_per_hour
        used[dev] = price.usd_per_hour

    return {"usd": usd, "usd_per_1k_images": usd_per_1k_images(usd, images),  # the dashboard's formula
            "usd_per_hour": used, "unpriced_devices": unknown}


def cost_of(progress, prices: dict[str, float] | None = None) -> dict:
    """Cost so far of a job's progress (jobs.progress.JobProgress) and, if it is not complete,
    projected for all its images at the same $/image."""
    devices = progress.device_seconds
    if not devices and progress.summary is not None:
        devices = dict(progress.summary.get("device_seconds_by_device") or {})
    images = progress.images_done
    c = job_cost(devices, images, prices or None)
    c["device_seconds"] = sum(devices.values())
    c["device_seconds_by_device"] = dict(devices)
    c["images"] = {"done": images, "total": progress.images_total}  # one shape everywhere (jobs.summary)
    if progress.images_total and images and images < progress.images_total:
        c["projected_usd"] = c["usd"] / images * progress.images_total
    else:
        c["projected_usd"] = c["usd"] if progress.succeeded else None
    return c
