"""Small text-to-image pieces built on disk for tests: a random T5 encoder with its tokenizer in
the Hugging Face layout (no download), and a test-tiny-t2i GPT + VQ in the official layout."""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a an the of on in with and red blue green yellow white black circle square triangle ring cat dog "
         "photo painting big small two three sky ground grass tree house car").split()


def make_t5_folder(path: Path, d_model: int, seed: int = 0) -> Path:
    """A 2-layer random T5 encoder and a word-piece Unigram tokenizer (ids: <pad> 0, </s> 1, <unk> 2)."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    path.mkdir(parents=True, exist_ok=True)
    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + [f"\u2581{w}" for w in WORDS] + list("abcdefghijklmnopqrstuvwxyz")
    T5Tokenizer(vocab=[(p, -float(i)) for i, p in enumerate(pieces)], extra_ids=0).save_pretrained(str(path))
    cfg = T5Config(vocab_size=len(pieces), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    T5EncoderModel(cfg).save_pretrained(str(path))
    return path


def make_t2i_checkpoints(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """test-tiny-t2i weights as train_t2i.py saves them ({"model": sd} with the null caption buffer)
    and the test-tiny VQ; weights scaled up so that prompts visibly change the logits."""
    from linegen.workers.models.gpt import GPT
    from linegen.workers.models.checkpoint import init_random
    from linegen.workers.models.registry import get_spec
    from linegen.workers.models.vq import VQModel

    spec = get_spec("test-tiny-t2i")
    folder.mkdir(parents=True, exist_ok=True)
    gpt = GPT(spec.gpt)
    init_random(gpt, seed)
    for p in gpt.parameters():
        p.data.mul_(3)
    gpt.cls_embedding.uncond_embedding.normal_(generator=torch.Generator().manual_seed(seed))
    torch.save({"model": gpt.state_dict(), "steps": 10}, folder / "t2i_gpt.pt")
    torch.manual_seed(seed + 1)
    vq = VQModel(spec.vq)
    torch.save({"model": vq.state_dict()}, folder / "vq.pt")
    return folder / "t2i_gpt.pt", folder / "vq.pt"
