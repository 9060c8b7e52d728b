"""`linegen bench`: variants side by side (decode path x dtype) and the roofline of every row."""
from __future__ import annotations

import pytest
import torch

from linegen.bench.engine_bench import BenchOptions, Variant, parse_variants, run_bench
from linegen.bench.tables import render_bench
from linegen.workers.models.registry import get_spec

SPEC = get_spec("test-tiny")


@pytest.fixture(scope="module")
def report():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_bench(BenchOptions(model=SPEC.name, policies=("full", "linear"), ratios=("1/4",), batch=2,
                                      memory_budget="64MiB", max_batch_cap=3, cfg_scale=2.0, warmup=False,
                                      variants=parse_variants("off:float32,static:bfloat16")))
    finally:
        torch.set_num_threads(before)


def test_variants_parse_and_reject_bad_names():
    assert parse_variants("off:float32, on:auto,auto") == (Variant("off", "float32"), Variant("on", "auto"),
                                                          Variant("auto", None))
    with pytest.raises(ValueError, match="compile must be"):
        parse_variants("fast:float32")
    with pytest.raises(ValueError, match="dtype must be"):
        parse_variants("on:fp8")


def test_every_policy_runs_in_every_variant_with_ratios_inside_a_variant(report):
    rows = {(r["policy"], r["variant"]): r for r in report["results"]}
    assert set(rows) == {(p, v) for p in ("full", "linear") for v in ("off:float32", "static:bfloat16")}
    assert rows[("full", "off:float32")]["path"] == "eager" and rows[("full", "static:bfloat16")]["path"] == "static"
    assert rows[("linear", "static:bfloat16")]["dtype"] == "bfloat16"
    for v in ("off:float32", "static:bfloat16"):  # vs_full compares within the same variant
        lin, full = rows[("linear", v)], rows[("full", v)]
        assert lin["vs_full"]["images_per_s"] == pytest.approx(lin["images_per_s"] / full["images_per_s"])
    # bf16 halves the cache bytes per sequence
    assert rows[("full", "static:bfloat16")]["kv_bytes_per_sequence"] * 2 == rows[("full", "off:float32")]["kv_bytes_per_sequence"]


def test_roofline_counts_flops_and_bytes_per_step(report):
    c, N, C = SPEC.gpt, SPEC.num_tokens, SPEC.prefix_len
    row = next(r for r in report["results"] if r["policy"] == "full" and r["variant"] == "off:float32")
    roof = row["roofline"]
    rows = 2 * 2  # batch 2 with CFG
    per_row = 2 * (c.n_layer * (4 * c.dim ** 2 + 3 * c.dim * c.ffn_dim) + c.dim * c.vocab_size)
    contexts = [C] * C + [C + v for v in range(1, N)]  # prefill, then one more entry per step
    flops = sum(per_row + 4 * c.n_layer * c.dim * ctx for ctx in contexts) * rows
    assert roof["flops_per_step"] == pytest.approx(flops / N)
    kv = sum(contexts[C - 1:]) * 2 * c.n_layer * c.dim * 4 * rows  # fp32 K and V of every context read
    assert roof["kv_bytes_per_step"] == pytest.approx(kv / N)
    rate, bw = report["machine"]["matmul_flops_float32"], report["machine"]["read_bytes_per_s"]
    assert roof["compute_bound_images_per_s"] == pytest.approx(2 * rate / flops)
    assert roof["memory_bound_images_per_s"] == pytest.approx(2 * bw / (N * roof["weight_bytes_per_step"] + kv))
    assert roof["fraction_of_bound"] == pytest.approx(row["images_per_s"] / min(
        roof["compute_bound_images_per_s"], roof["memory_bound_images_per_s"]))
    assert row["roofline_at_max_batch"]["images"] == 3
    text = render_bench(report)
    assert "Roofline" in text and text.count("| full | 1.000 | off:float32 |") == 2  # batch 2 and max batch 3


def test_bench_cli_refuses_a_bad_variant_dtype_and_compile_mode(tmp_path):
    from cli_runner import invoke  # in-process: both refusals come before any model loads

    bad = invoke(["bench", "--model", SPEC.name, "--variants", "off:fp8"])
    assert bad.returncode != 0 and "dtype must be" in bad.stderr
    bad = invoke(["bench", "--model", SPEC.name, "--compile", "sometimes"])
    assert bad.returncode != 0 and "compile must be" in bad.stderr
