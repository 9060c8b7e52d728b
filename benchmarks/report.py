"""Plain-text (Markdown) tables for benchmark reports, so the same text goes to the terminal and
to benchmarks/RESULTS.md."""
from __future__ import annotations


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:.1f}"


def render_bench(report: dict) -> str:
    m = report["machine"]
    head = (f"model {report['model']} ({report['layers']} layers, dim {report['dim']}, {report['heads']} heads), "
            f"{report['grid']}x{report['grid']} grid (N={report['tokens']}, prefix {report['prefix']}), "
            f"batch {report['batch']}, cfg {report['cfg_scale']}; {m['device']} {m.get('gpu', '')} {m['dtype']}, "
            f"{m['threads']} threads, plain matmul {m['matmul_flops'] / 1e9:.1f} GFLOP/s, "
            f"memory read {m['read_bytes_per_s'] / 1e9:.1f} GB/s; "
            f"memory budget {report['memory_budget_bytes'] / 2**30:.2f} GiB (weights {report['weights_bytes'] / 2**30:.2f} GiB)")
    cols = ["policy", "ratio", "KV MiB/seq", "(vs full)", "max seqs", "(vs full)", "tokens/s", "images/s",
            "(vs full)", "images/s @max", "(run at)", "(vs full)", "peak MiB", "(vs full)", "scoring share",
            "% of matmul peak", "% of read bandwidth"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["results"]:
        v = r["vs_full"]
        at_max = r["images_per_s_at_max_batch"]
        lines.append("| " + " | ".join([
            r["policy"], f"{r['ratio']:.3f}", _mib(r["kv_bytes_per_sequence"]), _ratio(v["kv_bytes_per_sequence"]),
            str(r["max_sequences"]), _ratio(v["max_sequences"]), f"{r['tokens_per_s']:.1f}", f"{r['images_per_s']:.4f}",
            _ratio(v["images_per_s"]), "-" if at_max is None else f"{at_max:.4f}",
            "-" if r["max_batch_run"] is None else str(r["max_batch_run"]), _ratio(v["images_per_s_at_max_batch"]),
            _mib(r["peak_memory_bytes"]), _ratio(v["peak_memory_bytes"]), f"{r['scoring_share']:.1%}",
            f"{r['fraction_of_matmul_peak']:.1%}", f"{r['fraction_of_read_bandwidth']:.1%}",
        ]) + " |")
    return "\n".join(lines)
