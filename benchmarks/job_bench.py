"""The job system's overhead: `linegen run` (Ray actor, PNG + Parquet, storage, commits) against the
bare engine loop (decode + VQ decode, nothing written) on the same model, batch and machine.

    python -m linegen.benchmarks.job_bench --model test-tiny --images 512 --batch 16 --shard-size 128

Prints a Markdown table. The job's throughput is counted from its first actor being ready to the
last commit (Ray start and model loading are a fixed cost per job, reported on their own line).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def bare_loop(model: str, images: int, batch: int) -> dict:
    import torch

    from linegen.workers.engine import requests_for
    from linegen.jobs.manifest import ManifestRow
    from linegen.settings.model_choice import ModelChoice
    from linegen.jobs.plan import expand_items
    from linegen.workers.cache import make_policy
    from linegen.workers.engine import Engine

    spec, gpt, vq, device = ModelChoice(model, random_weights=True, device="cpu").load()
    engine = Engine(gpt, vq, spec, make_policy("full"), device=device, max_batch=batch)
    rows = [ManifestRow(index=0, line=1, prompt=None, class_id=1, count=images, seed=None, id=None,
                        cfg_scale=None, temperature=None, top_k=None, top_p=None)]
    items = expand_items(rows, job_seed=0, sampling=spec.default_sampling)
    engine.run_wave(requests_for(items[:1])[0])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, images, batch):
        res = engine.run_wave(requests_for(items[i:i + batch])[0])
        engine.decode_images(res.tokens)
    wall = time.perf_counter() - t0
    return {"images": images, "wall_s": wall, "images_per_s": images / wall, "threads": torch.get_num_threads()}


def job_run(model: str, images: int, batch: int, shard_size: int, out: str) -> dict:
    from linegen.settings.cache_choice import CacheChoice
    from linegen.settings.model_choice import ModelChoice
    from linegen.jobs.prepare import prepare_job
    from linegen.jobs.run import run_embedded
    from linegen.jobs.spec import JobSpec
    from linegen.workers.models.registry import get_spec

    spec_m = get_spec(model)
    manifest = Path(out) / "manifest.jsonl"
    manifest.write_text(json.dumps({"class_id": 1, "count": images}) + "\n")
    spec = JobSpec(job_id="bench", manifest=str(manifest), out=out, model=ModelChoice(model, random_weights=True, device="cpu"),
                   cache=CacheChoice("full"), sampling=spec_m.default_sampling,
                   shard_size=shard_size, batch_size=batch)
    marks: dict[str, float] = {}

    def progress(p):
        if p.event.endswith("committed"):
            marks["last_commit"] = time.time()

    t0 = time.time()
    summary = run_embedded(prepare_job(spec), progress=progress)
    wall = time.time() - t0
    # steady state: from the actor's first wave (stats started_at) to the last commit seen
    import pyarrow.parquet as pq

    first_wave = min(min(t.timestamp() for t in pq.read_table(f).column("started_at").to_pylist())
                     for f in (Path(out) / "bench" / "stats").glob("*.parquet"))
    steady = marks["last_commit"] - first_wave
    return {"images": images, "wall_s": wall, "startup_s": wall - steady, "steady_s": steady,
            "images_per_s": images / steady, "images_per_s_incl_startup": images / wall,
            "device_seconds": summary["device_seconds"], "actor_images_per_s": images / summary["device_seconds"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="test-tiny")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=128)
    args = ap.parse_args(argv)
    bare = bare_loop(args.model, args.images, args.batch)
    with tempfile.TemporaryDirectory() as out:
        job = job_run(args.model, args.images, args.batch, args.shard_size, out)
    ratio = job["images_per_s"] / bare["images_per_s"]
    print(f"model {args.model}, {args.images} images, batch {args.batch}, shard size {args.shard_size}, "
          f"cpu threads {bare['threads']}")
    print()
    print("| path | images/s | vs bare engine | wall s |")
    print("|---|---|---|---|")
    print(f"| bare engine loop (decode + VQ decode, nothing written) | {bare['images_per_s']:.2f} | 1.00x | {bare['wall_s']:.1f} |")
    print(f"| linegen run, steady state (actor, PNG, Parquet, commits) | {job['images_per_s']:.2f} | {ratio:.2f}x | {job['steady_s']:.1f} |")
    print(f"| inside the actor: waves only (decode + VQ decode, from the job's stats) | {job['actor_images_per_s']:.2f} | "
          f"{job['actor_images_per_s'] / bare['images_per_s']:.2f}x | {job['device_seconds']:.1f} |")
    print(f"| linegen run, including Ray start + model load ({job['startup_s']:.1f} s) | "
          f"{job['images_per_s_incl_startup']:.2f} | {job['images_per_s_incl_startup'] / bare['images_per_s']:.2f}x | {job['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
