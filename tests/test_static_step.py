"""The static-shape decode step: the same tokens as the eager reference, compiled or not; item
determinism across buckets and rows; t2i prefix masks; graphs built once and reused; the rules
behind `compile auto` and `dtype auto`. Inductor compiles only the 2-layer test model here."""
from __future__ import annotations

import pytest
import torch

from linegen.workers.cache import Layout, make_policy
from linegen.workers.cache.static import StaticKVCache
from linegen.workers.engine import Engine, GenRequest, SamplingParams
from linegen.workers.engine.compile_choice import decide
from linegen.workers.engine.graphs import bucket_for, bucket_sizes, span_for, spans
from linegen.workers.models.config import GPTConfig, ModelSpec
from linegen.workers.models.loading import load_model
from linegen.workers.models.precision import auto_dtype, cpu_has_native_bf16, resolve_dtype_name
from linegen.workers.models.registry import TINY_VQ, get_spec

POLICIES = ["full", "linear", "streaming", "h2o", "snapkv"]
TINY = get_spec("test-tiny")  # 8x8 tokens: compiles fast
SPEC24 = ModelSpec(name="tiny24", gpt=GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=256), image_size=96, vq=TINY_VQ)


def sharp(spec: ModelSpec):
    gpt, vq = load_model(spec, None, None, random_seed=0)
    for p in gpt.parameters():  # sharper than the 0.02 init: greedy tokens are not near-ties
        p.data.mul_(5)
    return gpt, vq


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two, and far steadier on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gpt24():
    return sharp(SPEC24)[0]


@pytest.fixture(scope="module")
def tiny():
    return sharp(TINY)[0]


def policy(name: str, ratio: str = "1/6"):
    return make_policy(name, ratio=None if name == "full" else ratio)


def reqs(n: int, cfg: float = 3.0, top_k: int = 1, top_p: float = 1.0, seed0: int = 7, classes=None):
    return [GenRequest(seed=seed0 + i, class_id=(classes[i] if classes else i * 11 % 1000),
                       sampling=SamplingParams(cfg_scale=cfg, top_k=top_k, top_p=top_p)) for i in range(n)]


# --------------------------------------------------------------------------- the static step, eager


@pytest.mark.parametrize("name", POLICIES)
def test_static_step_gives_the_reference_greedy_tokens(gpt24, name):
    """24x24 grid: compaction runs 19 times per wave on the static buffers, between steps."""
    batch = reqs(3)
    ref = Engine(gpt24, None, SPEC24, policy(name), max_batch=4).run_wave(batch)
    static = Engine(gpt24, None, SPEC24, policy(name), max_batch=4, compile="static")
    got = static.run_wave(batch)
    assert got.stats.path == "static" and got.stats.padded_batch == 4  # 3 items padded to the bucket of 4
    assert torch.equal(got.tokens, ref.tokens)
    assert got.stats.kv_cache_bytes == ref.stats.kv_cache_bytes * 4 // 3  # the padded rows' share is counted
    if name == "linear":  # the same storage serves the next, shorter wave (bucket 1: a view of its first rows)
        alone = static.run_wave(batch[1:2])
        assert alone.stats.padded_batch == 1 and torch.equal(alone.tokens[0], ref.tokens[1])


def test_static_step_samples_as_the_reference_and_per_item(gpt24):
    batch = reqs(3, cfg=2.0, top_k=20, top_p=0.9)
    ref = Engine(gpt24, None, SPEC24, policy("linear"), max_batch=4).run_wave(batch).tokens
    static = Engine(gpt24, None, SPEC24, policy("linear"), max_batch=4, compile="static")
    assert torch.equal(static.run_wave(batch).tokens, ref)
    moved = static.run_wave([batch[2], batch[0]]).tokens  # other rows, another bucket (2)
    assert torch.equal(moved[0], ref[2]) and torch.equal(moved[1], ref[0])
    assert not torch.equal(ref[0], ref[1])


def test_static_cache_views_share_storage_and_lengths_are_per_row_and_head():
    cache = StaticKVCache(policy("linear"), Layout(1, 24), rows=8, n_layer=2, n_head=4, head_dim=16, dtype=torch.float32, device=torch.device("cpu"))
    view = cache.view(4)
    assert view.k[0].data_ptr() == cache.k[0].data_ptr() and view.k[0].shape[0] == 4
    assert view.lengths.shape == (4, 1) and view.lengths.data_ptr() == cache.lengths.data_ptr()
    with pytest.raises(ValueError, match="exceeds"):
        cache.view(9)


# --------------------------------------------------------------------------- t2i


def test_static_step_keeps_padded_caption_entries_out(monkeypatch):
    """The decode mask of the static step hides padded caption entries, as the reference does."""
    from linegen.workers.cache import static as static_module

    spec = get_spec("test-tiny-t2i")
    gpt, _ = sharp(spec)
    T = spec.gpt.caption_tokens
    g = torch.Generator().manual_seed(0)
    requests = []
    for i, valid in enumerate([7, 120, 0]):  # short, full, and an all-padding prompt
        mask = torch.zeros(T, dtype=torch.bool)
        if valid:
            mask[T - valid:] = True
        caption = torch.randn(T, spec.gpt.caption_dim, generator=g) * mask[:, None]
        requests.append(GenRequest(seed=i, caption=caption, caption_mask=mask,
                                   sampling=SamplingParams(cfg_scale=3.0, top_k=1)))
    for name in ("full", "linear"):
        ref = Engine(gpt, None, spec, policy(name, "1/4"), max_batch=3).run_wave(requests).tokens
        static = Engine(gpt, None, spec, policy(name, "1/4"), max_batch=3, compile="static")
        assert torch.equal(static.run_wave(requests).tokens, ref)
    # and the check has teeth: a step that attends to the padded entries decodes other tokens
    real_start = static_module.StaticKVCache.start_wave
    monkeypatch.setattr(static_module.StaticKVCache, "start_wave",
                        lambda self, pairs, prefix_mask: real_start(self, pairs, None))
    unmasked = Engine(gpt, None, spec, policy("full"), max_batch=3, compile="static").run_wave(requests).tokens
    ref = Engine(gpt, None, spec, policy("full"), max_batch=3).run_wave(requests).tokens
    assert not torch.equal(unmasked[:2], ref[:2])


# --------------------------------------------------------------------------- compiled (inductor)


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["stats"].values()) if "stats" in counters else 0


@pytest.mark.parametrize("name", ["full", "linear"])
def test_compiled_fp32_greedy_tokens_equal_eager(tiny, name):
    batch = reqs(3, classes=[3, 500, 999])
    eager = Engine(tiny, None, TINY, policy(name, "1/4"), max_batch=4).run_wave(batch)
    compiled = Engine(tiny, None, TINY, policy(name, "1/4"), max_batch=4, compile="on")
    first = compiled.run_wave(batch)
    assert first.stats.path == "inductor" and first.stats.compile_s > 0
    assert torch.equal(first.tokens, eager.tokens)
    # a second wave reuses the compiled step: nothing is built and dynamo traces nothing new
    traced = _graph_count()
    again = compiled.run_wave(list(reversed(batch)))
    assert again.stats.compile_s == 0.0 and _graph_count() == traced
    assert torch.equal(again.tokens, eager.tokens.flip(0))


def test_compiled_items_do_not_depend_on_batch_or_row(tiny):
    batch = reqs(4, cfg=2.0, top_k=1, classes=[1, 2, 3, 4])
    engine = Engine(tiny, None, TINY, policy("full"), max_batch=4, compile="on")
    together = engine.run_wave(batch).tokens  # bucket 4
    builds = engine._static["inductor"].graphs.builds
    alone = engine.run_wave(batch[3:])  # bucket 1: another compiled shape
    moved = engine.run_wave([batch[2], batch[1], batch[0]])  # 3 items padded into bucket 4: no new build
    assert alone.stats.padded_batch == 1 and torch.equal(alone.tokens[0], together[3])
    assert moved.stats.compile_s == 0.0 and engine._static["inductor"].graphs.builds == builds + 1
    assert torch.equal(moved.tokens, together[[2, 1, 0]])


# --------------------------------------------------------------------------- buckets, spans


def test_buckets_and_spans():
    assert bucket_sizes(247, 3) == (62, 124, 247) and bucket_sizes(1, 6) == (1,)
    assert bucket_for(100, (62, 124, 247)) == 124 and bucket_for(5, (62, 124, 247)) == 62
    assert spans(121, True, "cuda_graph") == (121,) and spans(121, True, "inductor") == (121,)
    assert spans(577, False, "inductor") == (152, 304, 456, 577) and spans(65, False, "inductor") == (65,)
    gpu_full = spans(577, False, "cuda_graph")
    assert gpu_full[0] == 64 and gpu_full[-1] == 577 and len(gpu_full) == 10
    assert span_for(63, gpu_full) == 64 and span_for(64, gpu_full) == 128 and span_for(576, gpu_full) == 577


# --------------------------------------------------------------------------- auto rules


def test_compile_auto_decides_by_device_and_job_size():
    b = get_spec("llamagen-c2i-b-256")
    assert decide("auto", "cuda", b, "bfloat16", row_steps=10).backend == "cuda_graph"
    assert decide("off", "cuda", b, "bfloat16", row_steps=10**9).backend is None
    assert decide("on", "cpu", TINY, "float32", row_steps=1).backend == "inductor"
    small = decide("auto", "cpu", b, "bfloat16", row_steps=32 * 256)  # one wave of 16: ~40 s eager
    assert small.backend is None and "compile" in small.reason
    big = decide("auto", "cpu", b, "bfloat16", row_steps=2 * 10_000 * 256)  # 10k images
    assert big.backend == "inductor"
    assert decide("auto", "cpu", b, "bfloat16", row_steps=1, shapes_to_build=0).backend == "inductor"
    with pytest.raises(ValueError, match="compile must be one of"):
        decide("fast", "cpu", b, "float32", row_steps=1)


def test_engine_auto_runs_short_cpu_jobs_eagerly_and_declared_long_ones_compiled(tiny):
    engine = Engine(tiny, None, TINY, policy("full"), max_batch=2, compile="auto")
    res = engine.run_wave(reqs(2))
    assert res.stats.path == "eager" and res.stats.compile_s == 0.0 and "auto" in res.stats.compile_decision
    engine.add_work(10**8)  # a job of 10^8 images repays any compile
    assert engine.decision(reqs(2)).backend == "inductor"


def test_dtype_auto_reads_the_cpu_flags():
    with_bf16 = "processor : 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
    without = "processor : 0\nflags\t\t: fpu sse avx2 avx512f\n"
    amx = "flags : fpu amx_bf16 amx_tile\n"
    assert cpu_has_native_bf16(with_bf16) and cpu_has_native_bf16(amx) and not cpu_has_native_bf16(without)
    assert auto_dtype("cpu", with_bf16) == "bfloat16" and auto_dtype("cpu", without) == "float32"
    assert auto_dtype("cuda:1", without) == "bfloat16"
    assert resolve_dtype_name(None, "cpu") == "float32" and resolve_dtype_name(None, "cuda") == "bfloat16"
    assert resolve_dtype_name("float16", "cpu") == "float16"
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype_name("fp8", "cpu")


def test_model_choice_takes_compile_and_dtype_auto():
    from linegen.jobs.errors import UserError
    from linegen.settings.model_choice import ModelChoice

    choice = ModelChoice(name="test-tiny", dtype="auto", device="cpu")
    choice.check()
    assert choice.compile == "auto"
    assert choice.resolve_dtype("cpu") == getattr(torch, auto_dtype("cpu"))
    with pytest.raises(UserError, match="--compile must be one of auto, on, off"):
        ModelChoice(name="test-tiny", compile="always").check()


def test_auto_falls_back_to_eager_when_the_step_cannot_be_built(tiny, monkeypatch):
    from linegen.workers.engine import graphs

    def no_compiler(self, cache, state, shape):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(graphs.StepGraphs, "_build", no_compiler)
    expected = Engine(tiny, None, TINY, policy("full"), max_batch=2).run_wave(reqs(2)).tokens
    auto = Engine(tiny, None, TINY, policy("full"), max_batch=2, compile="auto")
    auto.add_work(10**8)
    res = auto.run_wave(reqs(2))
    assert res.stats.path == "eager" and "no C++ compiler" in res.stats.compile_decision
    assert torch.equal(res.tokens, expected)
    assert auto.decision(reqs(2)).backend is None  # and it does not retry every wave
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        Engine(tiny, None, TINY, policy("full"), max_batch=2, compile="on").run_wave(reqs(2))
