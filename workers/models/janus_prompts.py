"""Janus prompts -> the token ids of the prefix, exactly as transformers prepares image generation.

With a checkpoint in transformers' layout the folder's own processor does it: its chat template
(one user turn, then the assistant prompt), then `processor(text, generation_mode="image")`, which
appends the begin-of-image token; the tokenizer adds BOS. DeepSeek's layout has no chat template
in transformers' sense, so its format is written out here (the same text: "<|User|>: PROMPT\n\n
<|Assistant|>:<begin_of_image>"). The unconditional copy keeps BOS and begin-of-image and turns
every other token into the pad token (transformers' `generate(generation_mode="image")`).

Each row holds PROMPT_TOKENS entries, left-padded. A longer prompt is cut in the middle of the
user text (the template's closing tokens and begin-of-image stay) and flagged `truncated`.
Random-weight runs without a checkpoint have no tokenizer: they use UTF-8 bytes as token ids, so
the pipeline and the prefix lengths are exercised, nothing more.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from linegen.workers.models.text import TRANSFORMERS_MISSING, EncodedPrompt, TextEncoderError

if TYPE_CHECKING:
    from linegen.workers.models.config import ModelSpec

BOI_TOKEN = "<begin_of_image>"
USER, ASSISTANT = "<|User|>", "<|Assistant|>"
# DeepSeek-LLM's special ids (BOS, pad, begin-of-image), used by the byte stand-in tokenizer.
BYTE_IDS = dict(bos=100000, pad=100002, boi=100016, first_byte=1000)


def deepseek_format(prompt: str) -> str:
    """DeepSeek's generation prompt (their sft format with an empty system prompt)."""
    return f"{USER}: {prompt.strip()}\n\n{ASSISTANT}:"


class JanusPrompts:
    """`encode(prompts)` -> one EncodedPrompt per prompt: `features` are the [2, P] token ids
    (prompt, unconditional copy), `mask` [P] the real entries. Same interface as TextEncoder."""

    def __init__(self, ids_of, bos: int, pad: int, boi: int, length: int, cache_items: int = 4096):
        self._ids_of, self.bos, self.pad, self.boi, self.length = ids_of, bos, pad, boi, length
        self._cache: OrderedDict[str, EncodedPrompt] = OrderedDict()
        self.cache_items = cache_items
        self.encoded = self.hits = 0
        self.suffix = _common_suffix(ids_of(["a", "b c d"]))

    @classmethod
    def load(cls, folder: str | Path | None, spec: "ModelSpec") -> "JanusPrompts":
        length = spec.gpt.caption_tokens
        if folder is None:
            return cls(_byte_ids, BYTE_IDS["bos"], BYTE_IDS["pad"], BYTE_IDS["boi"], length)
        folder = Path(folder)
        try:
            import transformers
        except ImportError:
            raise TextEncoderError(TRANSFORMERS_MISSING) from None
        transformers.logging.set_verbosity_error()
        processor = tokenizer = None
        try:
            has_processor = any((folder / n).is_file() for n in ("processor_config.json", "preprocessor_config.json"))
            if has_processor and _has_chat_template(folder):
                try:
                    processor = transformers.AutoProcessor.from_pretrained(str(folder), local_files_only=True)
                    tokenizer = processor.tokenizer
                except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError):
                    processor = None  # e.g. DeepSeek's own VLChatProcessor config: use its format below
            if tokenizer is None:
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise TextEncoderError(f"{folder}: cannot load the tokenizer: {e}".splitlines()[0]) from None
        bos, pad, boi = _special_ids(folder, tokenizer)
        if processor is not None:
            def ids_of(prompts: list[str]) -> list[list[int]]:
                texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": p}]}],
                                                       add_generation_prompt=True, tokenize=False) for p in prompts]
                return processor(text=texts, generation_mode="image", padding=False, return_tensors=None)["input_ids"]
        else:
            boi_text = tokenizer.convert_ids_to_tokens(boi)

            def ids_of(prompts: list[str]) -> list[list[int]]:
                return tokenizer([deepseek_format(p) + boi_text for p in prompts], add_special_tokens=True)["input_ids"]
        return cls(ids_of, bos, pad, boi, length)

    def stats(self) -> dict:
        return {"encoded": self.encoded, "cache_hits": self.hits, "cached": len(self._cache)}

    def token_counts(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self._ids_of(prompts)]

    def encode(self, prompts: list[str]) -> list[EncodedPrompt]:
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            for p, ids in zip(todo, self._ids_of(todo)):
                self._cache[p] = self._row(list(ids))
                while len(self._cache) > self.cache_items:
                    self._cache.popitem(last=False)
            self.encoded += len(todo)
        self.hits += len(prompts) - len(todo)
        for p in prompts:
            self._cache.move_to_end(p)
        return [self._cache[p] for p in prompts]

    def _row(self, ids: list[int]) -> EncodedPrompt:
        import torch

        P, truncated = self.length, len(ids) > self.length
        if truncated:  # keep the head and the template's tail (assistant tag, begin-of-image)
            keep_tail = min(self.suffix, P // 2)
            ids = ids[:P - keep_tail] + ids[len(ids) - keep_tail:]
        n = len(ids)
        cond = torch.full((P,), self.pad, dtype=torch.long)
        cond[P - n:] = torch.tensor(ids, dtype=torch.long)
        uncond = torch.where((cond == self.bos) | (cond == self.boi), cond, torch.full_like(cond, self.pad))
        mask = torch.zeros(P, dtype=torch.bool)
        mask[P - n:] = True
        return EncodedPrompt(features=torch.stack([cond, uncond]), mask=mask, tokens=n, truncated=truncated)


def _byte_ids(prompts: list[str]) -> list[list[int]]:
    b = BYTE_IDS
    return [[b["bos"]] + [b["first_byte"] + c for c in deepseek_format(p).encode()] + [b["boi"]] for p in prompts]


def _common_suffix(rows: list[list[int]]) -> int:
    a, b = rows
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    for name in ("processor_config.json", "tokenizer_config.json"):
        try:
            if "chat_template" in json.loads((folder / name).read_text()):
                return True
        except (OSError, ValueError):
            pass
    return False


def _special_ids(folder: Path, tokenizer) -> tuple[int, int, int]:
    """(BOS, pad, begin-of-image): the generation config's, as transformers' generate reads them,
    else the tokenizer's."""
    gen = {}
    try:
        gen = json.loads((folder / "generation_config.json").read_text())
    except (OSError, ValueError):
        pass
    bos = gen.get("bos_token_id", tokenizer.bos_token_id)
    pad = gen.get("pad_token_id", tokenizer.pad_token_id)
    boi = (gen.get("generation_kwargs") or {}).get("boi_token_id")
    if boi is None:
        boi = tokenizer.convert_tokens_to_ids(getattr(tokenizer, "boi_token", None) or BOI_TOKEN)
    if pad is None:
        pad = tokenizer.convert_tokens_to_ids("<｜▁pad▁｜>")
    missing = [n for n, v in (("BOS", bos), ("pad", pad), ("begin-of-image", boi))
               if v is None or v == tokenizer.unk_token_id]
    if missing:
        raise TextEncoderError(f"{folder}: the tokenizer has no {', '.join(missing)} token")
    return int(bos), int(pad), int(boi)


def random_prompt_requests(spec: "ModelSpec", n: int, sampling, used: int = 24):
    """Bench requests: `used` real entries per row (a typical templated prompt) of random ids below
    the model's text vocabulary, BOS first and begin-of-image last; pad 0."""
    import torch

    from linegen.workers.engine.engine import GenRequest

    P, vocab = spec.gpt.caption_tokens, spec.gpt.text_vocab_size
    used = min(used, P)
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.zeros(2, P, dtype=torch.long)
        ids[0, P - used:] = torch.randint(3, min(vocab, 1 << 16), (used,), generator=g)
        ids[:, P - used], ids[:, P - 1] = 1, 2
        mask = torch.zeros(P, dtype=torch.bool)
        mask[P - used:] = True
        out.append(GenRequest(seed=1000 + i, caption=ids, caption_mask=mask, sampling=sampling))
    return out
