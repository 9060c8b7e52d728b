"""Images of wave k decoded while wave k+1 decodes (workers/engine/overlap.py), through the actor.

On a GPU the decoder runs on a side stream from a worker thread; here the same thread-and-future
path runs on the CPU (`threaded=True`), so the actor's one-wave-late bookkeeping is exercised for
real: every committed image must still be the VQ decoding of its own tokens, in its own shard.
"""
from __future__ import annotations

import io
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from linegen.settings.cache_choice import CacheChoice
from linegen.jobs.manifest import Conditioning, parse_manifest
from linegen.settings.model_choice import ModelChoice
from linegen.jobs.plan import Plan
from linegen.jobs.sink import ShardSink
from linegen.jobs.storage import open_storage
from linegen.workers.actor import GenerationActor
from linegen.workers.cache import make_policy
from linegen.workers.engine import Engine
from linegen.workers.engine.overlap import ImageDecoder
from linegen.workers.models.config import SamplingParams
from linegen.workers.models.loading import load_model
from linegen.workers.models.registry import get_spec


def test_threaded_decoder_returns_the_inline_images():
    spec = get_spec("test-tiny")
    gpt, vq = load_model(spec, None, None)
    engine = Engine(gpt, vq, spec, make_policy("full"), max_batch=3)
    tokens = torch.randint(0, spec.gpt.vocab_size, (3, spec.num_tokens), generator=torch.Generator().manual_seed(0))
    threaded = ImageDecoder(engine, threaded=True)
    try:
        futures = [threaded.submit(tokens), threaded.submit(tokens.flip(0))]
        inline = ImageDecoder(engine).submit(tokens)
        assert inline.done() and not ImageDecoder(engine).overlaps
        assert np.array_equal(futures[0].result(timeout=60), inline.result())
        assert np.array_equal(futures[1].result(timeout=60), inline.result()[::-1])
    finally:
        threaded.close()


def test_actor_pipelines_waves_and_commits_each_image_with_its_tokens(tmp_path):
    spec = get_spec("test-tiny")
    rows = parse_manifest(b'{"class_id": 3, "count": 5}\n{"class_id": 9, "count": 4}\n', "m.jsonl",
                          Conditioning(kind="class"))
    shards = list(Plan(rows, job_seed=0, sampling=SamplingParams(cfg_scale=2.0, top_k=0), shard_size=4))
    sink = ShardSink(open_storage(str(tmp_path / "out")), "job-o", spec.name, "full", 1.0)
    actor = GenerationActor(ModelChoice(name=spec.name, device="cpu", compile="off"), CacheChoice(), sink, batch_size=3)
    actor.info()  # the model loads on the engine thread
    actor.runner.images = ImageDecoder(actor.engine, threaded=True)  # before any shard: the loop reads it per wave
    events, run_wave, finish_wave = [], actor.engine.run_wave, actor._finish_wave

    def slow_decode(tokens):  # a decoder slower than a wave, as a GPU's VQ can be: forces the overlap
        time.sleep(0.3)
        return actor.engine.decode_images(tokens)

    actor.runner.images._decode_on_side_stream = slow_decode
    actor.engine.run_wave = lambda requests: (events.append(("run", len(requests))), run_wave(requests))[1]
    actor._finish_wave = lambda pending, wave, *rest: (events.append(("finish", len(wave))),
                                                       finish_wave(pending, wave, *rest))[1]
    try:
        for shard in shards:
            actor.submit(shard, 1)
        outcomes, deadline = [], time.time() + 120
        while len(outcomes) < len(shards) and time.time() < deadline:
            o = actor.next_outcome(timeout=5)
            if o is not None:
                outcomes.append(o)
    finally:
        actor.shutdown()
    assert sorted(o.status for o in outcomes) == ["committed"] * 3, outcomes  # 9 items: shards of 4, 4, 1
    assert [e for e in events if e[0] == "run"] == [("run", 3)] * 3
    assert events[:3] == [("run", 3), ("run", 3), ("finish", 3)]  # wave 1 finished after wave 2 decoded
    engine = actor.engine
    for shard in shards:
        table = pq.read_table(tmp_path / "out" / "job-o" / "images" / f"{shard.shard_id}.parquet").to_pylist()
        assert [r["seed"] for r in table] == [it.seed for it in shard.items]
        tokens = torch.tensor([r["tokens"] for r in table], dtype=torch.long)
        expected = engine.decode_images(tokens)
        got = np.stack([np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")) for r in table])
        assert np.array_equal(got, expected)
