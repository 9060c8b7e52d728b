"""linegen: large synthetic image datasets from autoregressive image models (LlamaGen), with a
line-level compressed KV cache (LineAR), on Ray.

    import linegen

    result = linegen.run([{"class_id": 3, "count": 8}], out="out", cache="linear", cache_ratio="1/6")
    table = result.read_table()                      # the images, as Parquet rows
    linegen.validate("prompts.jsonl", model="linegen-shapes-c2i")
    linegen.submit("prompts.jsonl", cluster="http://HEAD:8265", out="s3://bucket/datasets")
    linegen.status("job-...", cluster="http://HEAD:8265")
    gen = linegen.Generator(model="linegen-shapes-c2i")   # also a Ray Data map_batches class
    images = gen.generate([{"class_id": 1, "count": 4}])

Nothing heavy is imported until a name is used: ``import linegen`` loads neither torch nor ray.
Errors are `linegen.UserError` (and subclasses) with the one-line message the CLI prints.
"""
from __future__ import annotations

import importlib

from linegen.errors import UserError

# name -> module that defines it; loaded on first use (PEP 562), so `import linegen` stays instant.
_LAZY = {
    "run": "linegen.api",
    "validate": "linegen.api",
    "submit": "linegen.api",
    "status": "linegen.api",
    "read_rows": "linegen.api",
    "read_images": "linegen.api",
    "connect": "linegen.api",
    "dashboard": "linegen.api",
    "report": "linegen.api",
    "JobResult": "linegen.api",
    "Validation": "linegen.api",
    "Generator": "linegen.generator",
    "GeneratedImage": "linegen.generator",
    "ManifestError": "linegen.jobs.manifest",
    "StorageError": "linegen.jobs.storage",
    "ClusterError": "linegen.cluster.jobs_api",
    "JobFailed": "linegen.jobs.errors",
}

__all__ = ["UserError", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'linegen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
