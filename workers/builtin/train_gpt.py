"""Train the built-in class-conditional GPT (LlamaGen architecture) on VQ codes of shapes images.

    python -m linegen.workers.builtin.train_gpt --vq workers/builtin/weights/shapes_vq.pt \
        --out workers/builtin/weights/shapes_gpt.pt

Steps: render `--images` training images (shapes.TRAIN_SEED), encode them once with the trained VQ
(24x24 = 576 codes each), then train next-token prediction with the class token as prefix, exactly
the sequence the engine decodes (prefix at position 0, visual token j predicted at position j).
The class is dropped to the null class with probability 0.1 so that classifier-free guidance works.
The file holds `{"model": state_dict}` (the official layout). `--init` continues from a checkpoint.

The shipped weights come from one run of this command on the 2-core CPU VM (bf16 autocast on its
AVX512-BF16 cores, torch.compile; ~1 min to render and encode, then 52 minutes of training):
    python -m linegen.workers.builtin.train_gpt --threads 2 --bf16 --compile --images 6000 --codes-cache /tmp/codes.npz \
        --steps 6000 --batch 16 --lr 2e-3 --warmup 100 --minutes 52 --save-every 200
The cosine schedule follows wall time (`--minutes`), so a slower machine trains fewer steps in the
same time; benchmarks/RESULTS.md records how many steps the shipped weights got.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from linegen.workers.builtin.datasets import builtin_data
from linegen.workers.builtin.images import to_tensor
from linegen.workers.cache import make_policy


@torch.inference_mode()
def encode_dataset(vq, data, count: int, seed: int, batch: int = 50, log=print) -> tuple[np.ndarray, np.ndarray]:
    """Render and VQ-encode `count` images -> (codes int16 [count, N], labels int64 [count])."""
    codes, labels = [], []
    t0 = time.time()
    for start in range(0, count, batch):
        imgs, lab = data.dataset(seed, min(batch, count - start), start=start)
        codes.append(vq.encode(to_tensor(imgs)).numpy().astype(np.int16))
        labels.append(lab)
        if (start // batch) % 20 == 0:
            log(f"encoded {start + len(lab)}/{count} images {time.time() - t0:.0f}s")
    return np.concatenate(codes), np.concatenate(labels)


def train_loss(gpt, codes: torch.Tensor, labels: torch.Tensor, grid: int) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy over all N tokens of each sequence."""
    n = codes.shape[1]
    x = torch.cat([gpt.embed_condition(labels), gpt.embed_tokens(codes[:, :-1])], dim=1)
    logits = gpt(x, torch.arange(n), grid, last_only=False)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))


@torch.inference_mode()
def sample_check(gpt, vq, spec, classifier_path: str | None, per_class: int = 2, log=print) -> float | None:
    """Generate a few images per class with the full cache and report the classifier's accuracy."""
    from linegen.workers.engine import Engine, GenRequest

    if classifier_path is None or not Path(classifier_path).is_file():
        return None
    from linegen.workers.builtin.classifier import classify, load_classifier

    n_cls = spec.gpt.num_classes
    engine = Engine(gpt.eval(), vq, spec, make_policy("full"), max_batch=n_cls * per_class)
    reqs = [GenRequest(seed=10_000 + i, class_id=i % n_cls,
                       sampling=spec.sampling())
            for i in range(n_cls * per_class)]
    tokens = engine.run_wave(reqs).tokens
    images = engine.decode_images(tokens)
    pred, _ = classify(load_classifier(classifier_path, n_cls), images)
    acc = float((pred == np.arange(len(reqs)) % n_cls).mean())
    log(f"sample check: class accuracy {acc:.2f} on {len(reqs)} full-cache samples")
    gpt.train()
    return acc


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vq", default="workers/builtin/weights/shapes_vq.pt")
    p.add_argument("--out", default="workers/builtin/weights/shapes_gpt.pt")
    p.add_argument("--model", default="linegen-shapes-c2i")
    p.add_argument("--images", type=int, default=4000, help="training images (rendered and encoded once)")
    p.add_argument("--codes-cache", default=None, help="a .npz to keep the encoded codes in between runs")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--class-dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on CPUs with AVX512-BF16)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-time budget: the schedule follows time when it runs ahead of steps; stops at the end")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss (about 25%% faster on a CPU after ~1 min)")
    p.add_argument("--save-every", type=int, default=0, help="save the checkpoint every K steps (0: only at the end)")
    p.add_argument("--init", default=None, help="continue from this GPT checkpoint")
    p.add_argument("--classifier", default="workers/builtin/weights/shapes_classifier.pt",
                   help="for the end-of-training sample check (skipped if missing)")
    p.add_argument("--check-every", type=int, default=0, help="sample check every K steps (0: only at the end)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from linegen.workers.models.checkpoint import load_vq
    from linegen.workers.models.registry import get_spec

    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = get_spec(args.model)
    vq = load_vq(spec.vq, args.vq, with_encoder=True)

    codes, labels = _training_codes(args, vq, spec.gpt.vocab_size)
    gpt = _new_gpt(spec, args.init)
    step, t0 = _train(gpt, vq, spec, codes, labels, args)
    gpt.eval()
    torch.save({"model": gpt.state_dict()}, args.out)
    print(f"saved {args.out} after {time.time() - t0:.0f}s ({step} steps)", flush=True)
    sample_check(gpt, vq, spec, args.classifier, log=lambda m: print(m, flush=True))


def _training_codes(args: argparse.Namespace, vq, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images' VQ codes and labels: rendered and encoded once (or from --codes-cache)."""
    if args.codes_cache and Path(args.codes_cache).is_file():
        z = np.load(args.codes_cache)
        codes_np, labels_np = z["codes"], z["labels"]
        print(f"loaded {len(codes_np)} encoded images from {args.codes_cache}", flush=True)
    else:
        data = builtin_data(args.model).data
        codes_np, labels_np = encode_dataset(vq, data, args.images, data.TRAIN_SEED + 1000 * args.seed,
                                             log=lambda m: print(m, flush=True))
        if args.codes_cache:
            np.savez(args.codes_cache, codes=codes_np, labels=labels_np)
    codes = torch.from_numpy(codes_np.astype(np.int64))
    used = len(np.unique(codes_np))
    print(f"{len(codes)} sequences of {codes.shape[1]} tokens; {used}/{vocab_size} codes used", flush=True)
    return codes, torch.from_numpy(labels_np)


def _new_gpt(spec, init: str | None):
    from linegen.workers.models.checkpoint import read_checkpoint
    from linegen.workers.models.gpt import GPT

    gpt = GPT(spec.gpt)
    if init:
        gpt.load_state_dict(read_checkpoint(init))
    else:  # LlamaGen's init
        for m in gpt.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(m.weight, std=0.02)
    gpt.train()
    return gpt


def _train(gpt, vq, spec, codes: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace) -> tuple[int, float]:
    """AdamW on a cosine schedule with warm-up and class dropout; -> (last step, start time)."""
    decay = [p_ for n, p_ in gpt.named_parameters() if p_.dim() >= 2]
    no_decay = [p_ for n, p_ in gpt.named_parameters() if p_.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    loss_fn = torch.compile(train_loss) if args.compile else train_loss
    g = torch.Generator().manual_seed(args.seed)
    null = spec.gpt.null_class
    t0, ema = time.time(), None
    step = 0
    for step in range(1, args.steps + 1):
        # Progress is steps or wall time, whichever is further along: on a shared CPU the cosine
        # still decays to its end inside --minutes.
        progress = step / args.steps
        if args.minutes is not None:
            progress = max(progress, (time.time() - t0) / (60 * args.minutes))
        progress = min(progress, 1.0)
        lr = args.lr * min(1.0, step / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(codes), (args.batch,), generator=g)
        lab = labels[idx].clone()
        lab[torch.rand(args.batch, generator=g) < args.class_dropout] = null
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = loss_fn(gpt, codes[idx], lab, spec.grid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 25 == 0 or step == 1:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} (avg {ema:.4f}) lr {lr:.2e} "
                  f"{time.time() - t0:.0f}s", flush=True)
        if args.save_every and step % args.save_every == 0:
            torch.save({"model": gpt.state_dict()}, args.out)
        if args.check_every and step % args.check_every == 0:
            torch.save({"model": gpt.state_dict()}, args.out)
            sample_check(gpt, vq, spec, args.classifier, per_class=1, log=lambda m: print(m, flush=True))
        if progress >= 1.0 and step < args.steps:
            print(f"time limit reached at step {step}", flush=True)
            break
    return step, t0


if __name__ == "__main__":
    main()
