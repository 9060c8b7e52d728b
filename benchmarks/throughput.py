"""Measure generation throughput per device for `linegen cost --estimate` (linegen/cost/throughput.json).

Runs a real `linegen run` job (embedded Ray, actor, PNG + Parquet, commits) per cache policy on this
machine and reads images per device-second from the job's own stats (the `_SUCCESS` summary):
the same quantity `linegen cost` multiplies by $/device-hour. `--write` appends the rows to
linegen/cost/throughput.json with the machine and date; rows are only ever measured, never typed in.

    python -m linegen.benchmarks.throughput --model test-tiny --policies full,linear --ratio 1/6 \\
        --images 256 --batch 16 --shard-size 64 --device cpu [--write]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "throughput.json"


def measure(model: str, policy: str, ratio: str | None, images: int, batch: int, shard_size: int, device: str,
            random_weights: bool) -> dict:
    from linegen.settings.cache_choice import CacheChoice
    from linegen.settings.model_choice import ModelChoice
    from linegen.jobs.prepare import prepare_job
    from linegen.jobs.run import run_embedded
    from linegen.jobs.spec import JobSpec
    from linegen.workers.models.registry import get_spec

    spec_m = get_spec(model)
    with tempfile.TemporaryDirectory() as out:
        manifest = Path(out) / "manifest.jsonl"
        classes = max(1, spec_m.gpt.num_classes or 1)
        manifest.write_text("".join(json.dumps({"class_id": i % classes, "count": 1}) + "\n" for i in range(images)))
        spec = JobSpec(job_id="throughput", manifest=str(manifest), out=out,
                       model=ModelChoice(model, random_weights=random_weights, device=device),
                       cache=CacheChoice(policy, ratio if policy != "full" else None),
                       sampling=spec_m.default_sampling,
                       shard_size=shard_size, batch_size=batch, workers=1)
        summary = run_embedded(prepare_job(spec))
    devices = summary["device_seconds_by_device"]
    return {"model": model, "device": ", ".join(sorted(devices)), "cache_policy": policy,
            "ratio": ratio if policy != "full" else None, "images_per_s": round(summary["images_per_device_s"], 3),
            "batch": batch, "images": summary["images"]["done"], "device_seconds": round(summary["device_seconds"], 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="test-tiny")
    ap.add_argument("--policies", default="full,linear")
    ap.add_argument("--ratio", default="1/6")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--checkpoint-weights", action="store_true", help="Use the model's weights (default: random; "
                    "throughput does not depend on the weights' values).")
    ap.add_argument("--write", action="store_true", help=f"Append the rows to {TABLE.name}.")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    machine = (f"{platform.node() or 'host'}: {os.cpu_count()} CPUs, {platform.machine()}"
               + (f", load average {load:.1f} at start" if load is not None else ""))
    rows = []
    for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
        row = measure(args.model, policy, args.ratio, args.images, args.batch, args.shard_size, args.device,
                      random_weights=not args.checkpoint_weights)
        weights = "model weights" if args.checkpoint_weights else "random weights"
        row["source"] = (f"python -m linegen.benchmarks.throughput (linegen run job stats, {weights}, {args.images} images, "
                         f"shard {args.shard_size}); {machine}")
        row["date"] = time.strftime("%Y-%m-%d")
        rows.append(row)
    print("| model | device | cache | images per device-s | batch |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['device']} | {r['cache_policy']} {r['ratio'] or ''} | {r['images_per_s']:.2f} | {r['batch']} |")
    if args.write:
        data = json.loads(TABLE.read_text()) if TABLE.exists() else {"rows": []}
        data.setdefault("rows", []).extend(rows)
        TABLE.write_text(json.dumps(data, indent=2) + "\n")
        print(f"appended {len(rows)} row(s) to {TABLE}")


if __name__ == "__main__":
    main()
