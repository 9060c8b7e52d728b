"""Rich renderings shared by commands."""
from __future__ import annotations


def summary_table(summary: dict):
    from rich.table import Table

    table = Table(title=f"job {summary['job_id']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    from linegen.workers.units import money
    from linegen.jobs.summary import count_of

    cost = summary.get("cost") or {}
    generated = summary["generated_this_run"]
    rows = [
        ("images", f"{count_of(summary['images'])} in {count_of(summary['shards'])} shards ({generated} generated now)"),
        ("model / cache", f"{summary['model']} / {summary['cache_policy']}"),
        ("throughput", _fmt(summary.get("images_per_s_this_run"), "images/s this run") if generated
         else "nothing to generate: every shard was already committed"),
        ("device time", f"{summary['device_seconds']:.1f} s ({_fmt(summary.get('images_per_device_s'), 'images per device-second')})"),
        ("peak memory", f"{summary['peak_memory_bytes'] / 2**20:.0f} MiB (KV cache {summary['kv_cache_bytes'] / 2**20:.1f} MiB)"),
        ("cost", "n/a" if cost.get("usd") is None
         else f"{money(cost['usd'])} ({money(cost.get('usd_per_1k_images') or 0)} per 1k images)"),
    ]
    if summary.get("prompts_truncated"):
        rows.append(("prompts cut", f"[yellow]{summary['prompts_truncated']} images came from prompts longer than the "
                                    "text encoder's limit (cut; see the prompt_truncated column)[/yellow]"))
    for k, v in rows:
        table.add_row(k, v)
    return table


def _fmt(x, unit: str) -> str:
    return "n/a" if x is None else f"{x:.3f} {unit}"


def whole_column(table, name: str, values) -> None:
    """Add a column whose cells (ids, names, states) are never cut or wrapped."""
    table.add_column(name, no_wrap=True, min_width=max([len(name)] + [len(str(v)) for v in values]))


def print_whole(renderable, stderr: bool = False) -> None:
    """Print with a console at least as wide as the renderable's narrowest layout, so columns made
    by `whole_column` keep their full text on a narrow terminal (which then wraps the line)."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(stderr=stderr)
    # measured without the terminal's limit, which Measurement.get would clamp the answer to
    need = Measurement.get(console, console.options.update_width(10_000), renderable).minimum
    if need > console.width:
        console = Console(stderr=stderr, width=need)
    console.print(renderable)
