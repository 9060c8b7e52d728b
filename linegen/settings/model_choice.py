"""Which model a job uses and how to load it, wherever the loading happens (CLI or a Ray actor).

A `ModelChoice` is plain data, so it pickles to actors; `load()` imports the GPU stack lazily and
turns every loading failure into a one-line `UserError`.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from linegen.errors import UserError
from linegen.jobs.storage import StorageError, fetch_folder_to_local, fetch_to_local
from linegen.settings.readable import check_readable
from linegen.workers.models.janus_config import is_janus
from linegen.workers.models.precision import resolve_dtype_name
from linegen.workers.models.text import TRANSFORMERS_MISSING, TextEncoder, TextEncoderError, check_folder

DTYPES = ("auto", "float32", "bfloat16", "float16")
COMPILE = ("auto", "on", "off")


@dataclass(frozen=True)
class ModelChoice:
    name: str
    checkpoint: str | None = None  # local path or s3:// URI, official LlamaGen layout
    vq_checkpoint: str | None = None
    random_weights: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str | None = None  # None: bfloat16 on GPU, float32 on CPU; auto: bf16 wherever native (workers/models/precision.py)
    compile: str = "auto"  # auto | on | off: the decode path (workers/engine/compile_choice.py); never changes an image's identity
    s3_endpoint_url: str | None = field(default=None, repr=False)  # may hold credentials: never shown
    random_seed: int = 0
    text_encoder: str | None = None  # t2i: T5 folder (Hugging Face layout), local path or s3:// prefix

    def to_json(self) -> dict:
        return asdict(self)

    def spec(self):
        from linegen.workers.models.registry import UnknownModel, get_spec

        try:
            spec = get_spec(self.name)
        except UnknownModel as e:
            raise UserError(str(e)) from None
        if _is_janus(spec):
            from linegen.settings import janus_choice

            return janus_choice.folder_spec(self, spec)
        return spec

    def check(self) -> None:
        """Everything that can be checked without loading weights (fast, before any work)."""
        spec = self.spec()
        if self.dtype is not None and self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.compile not in COMPILE:
            raise UserError(f"--compile must be one of {', '.join(COMPILE)}, got {self.compile!r}")
        if _is_janus(spec):
            from linegen.settings import janus_choice

            return janus_choice.check(self, spec)
        self._check_text_encoder(spec)
        if spec.random_by_design and self.checkpoint is None:
            return
        if not self.random_weights and spec.builtin_weights is None and self.checkpoint is None:
            raise UserError(f"model {self.name} needs --checkpoint (and --vq-checkpoint), or --random-weights")
        if self.checkpoint is not None and self.vq_checkpoint is None and spec.builtin_weights is None:
            raise UserError(f"model {self.name} needs --vq-checkpoint together with --checkpoint")
        if not self.random_weights:
            for flag, uri in (("--checkpoint", self.checkpoint), ("--vq-checkpoint", self.vq_checkpoint)):
                if uri is not None:
                    check_readable(flag, uri, self.s3_endpoint_url)

    def _check_text_encoder(self, spec) -> None:
        if spec.gpt.cond != "t2i":
            if self.text_encoder is not None:
                raise UserError(f"--text-encoder is only for text-to-image models; {self.name} is class-conditional")
            return
        if self.text_encoder is None:
            raise UserError(f"model {self.name} is text-to-image: it needs --text-encoder PATH (a T5 folder in the "
                            "Hugging Face layout, e.g. flan-t5-xl, local or s3://bucket/prefix)")
        import importlib.util

        if importlib.util.find_spec("transformers") is None:
            raise UserError(TRANSFORMERS_MISSING)
        if self.text_encoder.startswith("s3://"):
            check_readable("--text-encoder", self.text_encoder.rstrip("/") + "/config.json", self.s3_endpoint_url)
            return
        try:
            check_folder(os.path.expanduser(self.text_encoder.removeprefix("file://")))
        except TextEncoderError as e:
            raise UserError(f"--text-encoder: {e}") from None

    def resolve_device(self) -> str:
        import torch

        dev = self.device
        if dev == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda was requested but no CUDA GPU is available on this machine")
        if dev != "cpu" and not dev.startswith("cuda"):
            raise UserError(f"--device must be cpu, cuda or cuda:N, got {dev!r}")
        return dev

    def resolve_dtype(self, device: str):
        import torch

        return getattr(torch, resolve_dtype_name(self.dtype, device))

    def load(self):
        """-> (spec, gpt, vq, device) with weights on the device. Loading is the workers' own
        (workers/models/loading.py); this hands them the storage fetchers for the job's locations."""
        from functools import partial

        from linegen.workers.models.checkpoint import CheckpointError
        from linegen.workers.models.loading import load_named

        self.check()
        device = self.resolve_device()
        try:
            spec, gpt, vq = load_named(
                self.spec(), self.checkpoint, self.vq_checkpoint, device=device, dtype=self.resolve_dtype(device),
                fetch_file=partial(fetch_to_local, endpoint_url=self.s3_endpoint_url),
                fetch_folder=partial(fetch_folder_to_local, endpoint_url=self.s3_endpoint_url),
                random_weights=self.random_weights, random_seed=self.random_seed)
        except StorageError as e:
            raise UserError(f"--checkpoint {self.checkpoint}: {e}" if _is_janus(self.spec()) else str(e)) from None
        except CheckpointError as e:
            raise UserError(str(e)) from None
        return spec, gpt, vq, device

    def load_text_encoder(self, device: str):
        """The T5 encoder a t2i model needs (None for c2i), on `device`: bf16 on GPU as LlamaGen runs it."""
        spec = self.spec()
        if _is_janus(spec):  # Janus: token ids from the checkpoint's tokenizer and chat template
            from linegen.settings import janus_choice

            return janus_choice.prompts(self, spec)
        if spec.gpt.cond != "t2i":
            return None
        import torch

        self._check_text_encoder(spec)
        try:
            folder = fetch_folder_to_local(self.text_encoder, endpoint_url=self.s3_endpoint_url)
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
            return TextEncoder.load(folder, caption_tokens=spec.gpt.caption_tokens, caption_dim=spec.gpt.caption_dim,
                                    device=device, dtype=dtype)
        except (StorageError, TextEncoderError) as e:
            raise UserError(f"--text-encoder {self.text_encoder}: {e}") from None


def model_table() -> list[dict]:
    """The registered models, one plain dict each (`linegen models`)."""
    from linegen.workers.models.registry import DEFAULT_MODEL, MODELS

    return [{"name": s.name, "default": s.name == DEFAULT_MODEL, "conditioning": s.gpt.cond,
             "layers": s.gpt.n_layer, "heads": s.gpt.n_head, "dim": s.gpt.dim, "image_size": s.image_size,
             "grid": s.grid, "tokens": s.num_tokens, "prefix": s.prefix_len,
             "weights": "built-in" if s.builtin_weights else ("random" if s.random_by_design else "checkpoint"),
             "description": s.description}
            for s in MODELS.values()]


def _is_janus(spec) -> bool:
    return is_janus(spec)

