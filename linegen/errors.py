"""The one base class of every error a user can act on.

Each carries a one-line message (file, line and field where a manifest is at fault; never a
credential). The CLI prints it and exits non-zero; the Python API raises it. Subclasses live
next to what raises them: jobs.errors (jobs), jobs.manifest.ManifestError, jobs.storage.StorageError,
cluster.jobs_api.ClusterError, linegen.settings.config_file.ConfigError.
"""


class UserError(Exception):
    """Bad input or environment (flag, manifest, model, checkpoint, credentials...), in one line."""
