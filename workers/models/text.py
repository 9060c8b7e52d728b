"""The T5 text encoder of LlamaGen's text-to-image models (docs/llamagen.md, "T5 text conditioning").

A prompt becomes `caption_tokens` (120) rows of T5 features, left-padded: the valid rows come
last, padded rows are zero, and a bool mask marks the valid ones. That is the layout the t2i GPT
was trained on; the engine turns the mask into the attention mask with the forced diagonal.

The encoder is loaded with `transformers` from a folder in the Hugging Face layout
(`config.json`, weights, tokenizer files); nothing is downloaded. Features are cached per
prompt (LRU, bounded in bytes), because a dataset repeats each prompt `count` times and the
replicas of a row arrive one after another.
"""
from __future__ import annotations

import re
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: jobs/ checks folders without it
    import torch
    from torch import Tensor

TRANSFORMERS_MISSING = ("text prompts need the `transformers` package: pip install 'linegen[text]' "
                        "(or pip install transformers)")


class TextEncoderError(Exception):
    """A text encoder folder that cannot be used (missing files, wrong width, no transformers)."""


@dataclass(frozen=True)
class EncodedPrompt:
    features: Tensor  # [caption_tokens, d_model] on the CPU, left-padded, padded rows zero
    mask: Tensor  # [caption_tokens] bool, True = a real token
    tokens: int  # real tokens kept (including T5's closing </s>)
    truncated: bool  # the prompt had more tokens than caption_tokens; the tail was cut

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size() + self.mask.numel()


# The parts of PixArt's `clean_caption` (which LlamaGen applies, twice) that need neither ftfy
# nor BeautifulSoup: case, URLs, HTML tags, @handles, CJK, dash and quote variants, spacing.
_URL = re.compile(r"\b((?:https?:|www\.)\S+)", re.IGNORECASE)
_HTML = re.compile(r"<[^>]+>")
_HANDLE = re.compile(r"@[\w\d]+\b")
_CJK = re.compile(r"[\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff]+")
_DASHES = re.compile(r"[\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40"
                     r"\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d]+")
_DQUOTES = re.compile(r"[`´«»“”¨]")
_SQUOTES = re.compile(r"[‘’]")
_SPACES = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    text = urllib.parse.unquote_plus(str(text)).strip().lower()
    text = re.sub(r"<person>", "person", text)
    text = _URL.sub("", text)
    text = _HTML.sub(" ", text)
    text = _HANDLE.sub("", text)
    text = _CJK.sub("", text)
    text = _DASHES.sub("-", text)
    text = _DQUOTES.sub('"', text)
    text = _SQUOTES.sub("'", text)
    return _SPACES.sub(" ", text).strip()


def check_folder(path: str | Path) -> None:
    """The files a Hugging Face T5 folder must hold, checked without importing transformers."""
    p = Path(path)
    if not p.is_dir():
        raise TextEncoderError(f"text encoder {p}: not a folder")
    missing = []
    if not (p / "config.json").is_file():
        missing.append("config.json")
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        missing.append("weights (*.safetensors or pytorch_model.bin)")
    if not (p / "tokenizer.json").is_file() and not (p / "spiece.model").is_file():
        missing.append("tokenizer (tokenizer.json or spiece.model)")
    if missing:
        raise TextEncoderError(f"text encoder {p}: missing {', '.join(missing)}")


def load_tokenizer(path: str | Path):
    check_folder(path)
    try:
        import transformers
    except ImportError:
        raise TextEncoderError(TRANSFORMERS_MISSING) from None
    transformers.logging.set_verbosity_error()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise TextEncoderError(f"text encoder {path}: cannot load the tokenizer: {e}".splitlines()[0]) from None


def prepare_texts(prompts: list[str], clean: bool = True) -> list[str]:
    # LlamaGen runs clean_caption twice; the second pass catches what the first one exposed.
    return [clean_prompt(clean_prompt(p)) for p in prompts] if clean else list(prompts)


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each (prepared) text before truncation, including the closing </s>."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]


class TextEncoder:
    def __init__(self, tokenizer, model, caption_tokens: int, device: "torch.device",
                 cache_bytes: int = 256 << 20, clean: bool = True):
        self.tokenizer, self.model = tokenizer, model
        self.caption_tokens = caption_tokens
        self.device = device
        self.clean = clean
        self.d_model = int(model.config.d_model)
        self._cache: OrderedDict[str, EncodedPrompt] = OrderedDict()
        self._cache_bytes, self.cache_limit = 0, cache_bytes
        self.encoded = 0  # prompts run through T5 (cache misses)
        self.hits = 0

    @classmethod
    def load(cls, path: str | Path, *, caption_tokens: int = 120, caption_dim: int | None = None,
             device: "torch.device | str" = "cpu", dtype: "torch.dtype | None" = None,
             **options) -> "TextEncoder":
        import torch

        tokenizer = load_tokenizer(path)
        import transformers

        transformers.utils.logging.disable_progress_bar()
        try:
            model = transformers.T5EncoderModel.from_pretrained(str(path), local_files_only=True,
                                                                  dtype=dtype or torch.float32)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise TextEncoderError(f"text encoder {path}: cannot load: {e}".splitlines()[0]) from None
        if caption_dim is not None and model.config.d_model != caption_dim:
            raise TextEncoderError(f"text encoder {path}: d_model {model.config.d_model} does not match the "
                                   f"model's caption width {caption_dim}")
        device = torch.device(device)
        return cls(tokenizer, model.to(device).eval(), caption_tokens, device, **options)

    def stats(self) -> dict:
        return {"encoded": self.encoded, "cache_hits": self.hits, "cached": len(self._cache),
                "cache_bytes": self._cache_bytes}

    def encode(self, prompts: list[str]) -> list[EncodedPrompt]:
        """One EncodedPrompt per prompt; each distinct uncached prompt goes through T5 once."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        fresh = dict(zip(todo, self._run(todo))) if todo else {}
        self.hits += len(prompts) - len(todo)
        out = []
        for p in prompts:
            if p in fresh:
                out.append(fresh[p])
                continue
            self._cache.move_to_end(p)
            out.append(self._cache[p])
        for p, e in fresh.items():
            self._remember(p, e)
        return out

    def _remember(self, prompt: str, enc: EncodedPrompt) -> None:
        self._cache[prompt] = enc
        self._cache_bytes += enc.nbytes
        while self._cache_bytes > self.cache_limit and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes

    def _run(self, prompts: list[str]) -> list[EncodedPrompt]:
        import torch

        T = self.caption_tokens
        texts = prepare_texts(prompts, self.clean)
        full_lengths = token_counts(self.tokenizer, texts)
        batch = self.tokenizer(texts, max_length=T, padding="max_length", truncation=True,
                               add_special_tokens=True, return_tensors="pt")
        ids, attn = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=attn).last_hidden_state.float().cpu()
        self.encoded += len(prompts)
        out = []
        for i, n_full in enumerate(full_lengths):
            n = int(attn[i].sum())
            # The tokenizer pads on the right; the GPT was trained with the valid rows last.
            feats = torch.zeros(T, hidden.shape[-1])
            mask = torch.zeros(T, dtype=torch.bool)
            if n:
                feats[T - n:] = hidden[i, :n]
                mask[T - n:] = True
            out.append(EncodedPrompt(features=feats, mask=mask, tokens=n, truncated=n_full > T))
        return out
