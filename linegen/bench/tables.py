"""Plain-text (Markdown) tables for benchmark reports, so the same text goes to the terminal and
to benchmarks/RESULTS.md."""
from __future__ import annotations


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:.1f}"


def _gf(x) -> str:
    return f"{x / 1e9:.1f}"


def _sig(x) -> str:
    return f"{x:.3g}"


def render_bench(report: dict) -> str:
    m = report["machine"]
    head = (f"model {report['model']} ({report['layers']} layers, dim {report['dim']}, {report['heads']} heads), "
            f"{report['grid']}x{report['grid']} grid (N={report['tokens']}, prefix {report['prefix']}), "
            f"batch {report['batch']}, cfg {report['cfg_scale']}; {m['device']} {m.get('gpu', '')}, "
            f"{m['threads']} threads, plain matmul fp32 {_gf(m['matmul_flops_float32'])} / bf16 "
            f"{_gf(m['matmul_flops_bfloat16'])} GFLOP/s, memory read {m['read_bytes_per_s'] / 1e9:.1f} GB/s; "
            f"memory budget {report['memory_budget_bytes'] / 2**30:.2f} GiB (weights {report['weights_bytes'] / 2**30:.2f} GiB)")
    cols = ["policy", "ratio", "variant", "KV MiB/seq", "(vs full)", "max seqs", "(vs full)", "tokens/s", "images/s",
            "(vs full)", "images/s @max", "(run at)", "(vs full)", "peak MiB", "(vs full)", "scoring share",
            "compile s", "% of matmul peak", "% of read bandwidth"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["results"]:
        v = r["vs_full"]
        at_max = r["images_per_s_at_max_batch"]
        lines.append("| " + " | ".join([
            r["policy"], f"{r['ratio']:.3f}", f"{r['variant']} ({r['dtype']}, {r['path']})",
            _mib(r["kv_bytes_per_sequence"]), _ratio(v["kv_bytes_per_sequence"]),
            str(r["max_sequences"]), _ratio(v["max_sequences"]), f"{r['tokens_per_s']:.1f}", f"{r['images_per_s']:.4f}",
            _ratio(v["images_per_s"]), "-" if at_max is None else f"{at_max:.4f}",
            "-" if r["max_batch_run"] is None else str(r["max_batch_run"]), _ratio(v["images_per_s_at_max_batch"]),
            _mib(r["peak_memory_bytes"]), _ratio(v["peak_memory_bytes"]), f"{r['scoring_share']:.1%}",
            f"{r['compile_s']:.1f}", f"{r['fraction_of_matmul_peak']:.1%}", f"{r['fraction_of_read_bandwidth']:.1%}",
        ]) + " |")
    return "\n".join(lines + ["", render_roofline(report)])


def render_roofline(report: dict) -> str:
    """Per policy, variant and batch: what a step must move, the bound it sets, the share reached."""
    cols = ["policy", "ratio", "variant", "images", "GFLOP/step", "weights MB/step", "KV MB/step",
            "compute bound img/s", "memory bound img/s", "achieved img/s", "% of bound",
            "% of fp32 GEMM", "% of bf16 GEMM"]
    lines = ["Roofline (rates measured in this run; KV bytes = the filled entries a step must read):", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["results"]:
        for roof in (r["roofline"], r.get("roofline_at_max_batch")):
            if roof is None:
                continue
            lines.append("| " + " | ".join([
                r["policy"], f"{r['ratio']:.3f}", r["variant"], str(roof["images"]), _sig(roof["flops_per_step"] / 1e9),
                _sig(roof["weight_bytes_per_step"] / 1e6), _sig(roof["kv_bytes_per_step"] / 1e6),
                f"{roof['compute_bound_images_per_s']:.3f}", f"{roof['memory_bound_images_per_s']:.3f}",
                f"{roof['images_per_s']:.4f}", f"{roof['fraction_of_bound']:.1%} ({roof['bound']})",
                f"{roof['fraction_of_gemm_float32']:.1%}", f"{roof['fraction_of_gemm_bfloat16']:.1%}",
            ]) + " |")
    return "\n".join(lines)
