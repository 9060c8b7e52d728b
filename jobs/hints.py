"""The commands the tool suggests, spelled so they work as printed.

A hint such as "`linegen resume r3` finishes it" fails when r3 lives on a cluster (resume then
looks for a local job) or under another output root; so every suggested command carries the
`--cluster` or `--out` that finds the job, quoted for a POSIX shell.
"""
from __future__ import annotations

import shlex


def command(verb: str, job_id: str, *, cluster: str | None = None, out: str | None = None) -> str:
    """``linegen VERB JOB [--cluster URL | --out OUT]`` (cluster wins: it knows where the outputs are)."""
    parts = ["linegen", verb, job_id]
    if cluster:
        parts += ["--cluster", cluster]
    elif out:
        parts += ["--out", out]
    return " ".join(shlex.quote(p) for p in parts)


def resume(job_id: str, *, cluster: str | None = None, out: str | None = None) -> str:
    return command("resume", job_id, cluster=cluster, out=out)
