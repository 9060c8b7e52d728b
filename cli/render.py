"""Rich renderings shared by commands."""
from __future__ import annotations


def summary_table(summary: dict):
    from rich.table import Table

    table = Table(title=f"job {summary['job_id']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    cost = summary.get("cost") or {}
    rows = [
        ("images", f"{summary['images']} in {summary['shards']} shards ({summary['generated_this_run']} generated now)"),
        ("model / cache", f"{summary['model']} / {summary['cache_policy']}"),
        ("throughput", _fmt(summary.get("images_per_s_this_run"), "images/s this run")),
        ("device time", f"{summary['device_seconds']:.1f} s ({_fmt(summary.get('images_per_device_s'), 'images per device-second')})"),
        ("peak memory", f"{summary['peak_memory_bytes'] / 2**20:.0f} MiB (KV cache {summary['kv_cache_bytes'] / 2**20:.1f} MiB)"),
        ("cost", "n/a" if cost.get("usd") is None else f"${cost['usd']:.4f} (${cost.get('usd_per_1k_images') or 0:.4f} per 1k images)"),
    ]
    if summary.get("prompts_truncated"):
        rows.append(("prompts cut", f"[yellow]{summary['prompts_truncated']} images came from prompts longer than the "
                                    "text encoder's limit (cut; see the prompt_truncated column)[/yellow]"))
    for k, v in rows:
        table.add_row(k, v)
    return table


def _fmt(x, unit: str) -> str:
    return "n/a" if x is None else f"{x:.3f} {unit}"
