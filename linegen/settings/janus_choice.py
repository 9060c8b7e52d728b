"""What `ModelChoice` does differently for Janus-Pro: one `--checkpoint DIR` folder holds the weights,
the VQ, the tokenizer and the chat template (either layout, docs/janus.md), and it decides the
dimensions. Every failure is a one-line UserError naming the flag."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from linegen.errors import UserError
from linegen.jobs.storage import StorageError, fetch_folder_to_local
from linegen.workers.models.janus_config import JanusConfigError, read_config, spec_from_config
from linegen.workers.models.janus_prompts import JanusPrompts
from linegen.workers.models.text import TRANSFORMERS_MISSING, TextEncoderError

if TYPE_CHECKING:
    from linegen.settings.model_choice import ModelChoice
    from linegen.workers.models.config import ModelSpec


def _local(uri: str) -> Path | None:
    return None if uri.startswith("s3://") else Path(os.path.expanduser(uri.removeprefix("file://")))


def check(choice: "ModelChoice", spec: "ModelSpec") -> None:
    if choice.text_encoder is not None:
        raise UserError(f"--text-encoder is not used by {choice.name}: its tokenizer and chat template come from --checkpoint DIR")
    if choice.vq_checkpoint is not None:
        raise UserError(f"--vq-checkpoint is not used by {choice.name}: its VQ decoder is inside --checkpoint DIR")
    if choice.checkpoint is None:
        if not choice.random_weights:
            raise UserError(f"model {choice.name} needs --checkpoint DIR (a Janus-Pro folder, transformers' or "
                            "DeepSeek's layout, local or s3://bucket/prefix), or --random-weights")
        return
    if choice.random_weights:
        return
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise UserError(TRANSFORMERS_MISSING)
    folder = _local(choice.checkpoint)
    if folder is None:
        from linegen.settings.readable import check_readable

        check_readable("--checkpoint", choice.checkpoint.rstrip("/") + "/config.json", choice.s3_endpoint_url)
        return
    folder_spec(choice, spec)  # reads config.json: a wrong layout is an error here, before any work


def folder_spec(choice: "ModelChoice", spec: "ModelSpec") -> "ModelSpec":
    """The checkpoint folder's model (local folders; an s3:// one is read when loaded)."""

    folder = None if choice.checkpoint is None or choice.random_weights else _local(choice.checkpoint)
    if folder is None:
        return spec
    if not folder.is_dir():
        raise UserError(f"--checkpoint {choice.checkpoint}: not a folder (Janus-Pro checkpoints are folders)")
    try:
        return spec_from_config(spec.name, read_config(folder))
    except JanusConfigError as e:
        raise UserError(f"--checkpoint {choice.checkpoint}: {e}") from None


def _folder(choice: "ModelChoice") -> Path | None:
    if choice.checkpoint is None or choice.random_weights:
        return None

    try:
        return fetch_folder_to_local(choice.checkpoint, endpoint_url=choice.s3_endpoint_url)
    except StorageError as e:
        raise UserError(f"--checkpoint {choice.checkpoint}: {e}") from None


def prompts(choice: "ModelChoice", spec: "ModelSpec"):
    """The prompt encoder (tokenizer + chat template of the folder; bytes with random weights)."""

    try:
        return JanusPrompts.load(_folder(choice), spec)
    except TextEncoderError as e:
        raise UserError(f"--checkpoint {choice.checkpoint}: {e}") from None
