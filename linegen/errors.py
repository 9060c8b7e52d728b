"""The one base class of every error a user can act on.

Each carries a one-line message (file, line and field where a manifest is at fault; never a
credential). The CLI prints it and exits non-zero; the Python API raises it. Subclasses live
next to what raises them: jobs.errors (jobs), jobs.manifest.ManifestError, jobs.storage.StorageError,
cluster.jobs_api.ClusterError, linegen.settings.config_file.ConfigError.
"""
import re


class UserError(Exception):
    """Bad input or environment (flag, manifest, model, checkpoint, credentials...), in one line."""


def one_line(text: object, limit: int = 300, *, last: bool = False) -> str:
    """A message as one line, whitespace collapsed, cut at ``limit``: the last non-empty line with
    ``last`` (Ray wraps an actor's error in a long message whose last line names the cause) or when
    it is a traceback, else the first."""
    s = str(text).strip()
    lines = [ln.strip() for ln in s.splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[-1] if (last or "Traceback" in s) and len(lines) > 1 else lines[0]
    line = re.sub(r"\s+", " ", line)
    return line if len(line) <= limit else line[: limit - 3] + "..."
