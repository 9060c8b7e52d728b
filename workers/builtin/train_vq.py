"""Train a built-in model's VQ tokenizer (the VQ-16 family's code, smaller widths, downsample 4).

    python -m linegen.workers.builtin.train_vq --out workers/builtin/weights/shapes_vq.pt
    python -m linegen.workers.builtin.train_vq --model linegen-photos-c2i --out workers/builtin/weights/photos_vq.pt

Losses: pixel L1 + L2, codebook loss + 0.25 x commitment (straight-through), with LlamaGen's
L2-normalised codebook; dead codes are restarted from current encoder outputs. No GAN or
perceptual loss: the images are flat-coloured shapes. The file holds `{"model": state_dict}` of a
VQModel with its encoder, i.e. the official layout (`load_vq` reads it decoder-only).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from linegen.workers.builtin.datasets import builtin_data
from linegen.workers.builtin.images import to_tensor
from linegen.workers.models.vq import VQModel


def quantize(vq: VQModel, x: torch.Tensor):
    """-> (z_q straight-through [B,D,h,w], indices [B*h*w], vq loss)."""
    h = vq.quant_conv(vq.encoder(x))
    z = F.normalize(h, p=2, dim=1)
    b, d, hh, ww = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    e = vq.quantize.codebook()
    idx = (flat @ e.T).argmax(1)  # unit vectors: nearest = largest dot product
    zq = e[idx].reshape(b, hh, ww, d).permute(0, 3, 1, 2)
    loss = F.mse_loss(zq, z.detach()) + 0.25 * F.mse_loss(z, zq.detach())
    return z + (zq - z).detach(), idx, loss, flat.detach()


def main(argv: list[str] | None = None) -> None:
    from linegen.workers.models.registry import get_spec

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="workers/builtin/weights/shapes_vq.pt")
    p.add_argument("--model", default="linegen-shapes-c2i", help="registered model whose VQ config to train")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=48, help="train on random token-aligned crops of this size (faster)")
    p.add_argument("--full-steps", type=int, default=150, help="last steps on whole images")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--minutes", type=float, default=None, help="stop after this much wall time")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = get_spec(args.model).vq
    data = builtin_data(args.model).data
    vq = VQModel(cfg, with_encoder=True)
    with torch.no_grad():
        vq.quantize.embedding.weight.uniform_(-1, 1)
    opt = torch.optim.Adam(vq.parameters(), lr=args.lr, betas=(0.9, 0.95))
    usage = torch.zeros(cfg.codebook_size)
    t0, index = time.time(), 0
    for step in range(1, args.steps + 1):
        lr = args.lr * min(1.0, step / 100) * (0.1 + 0.9 * (1 - step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        imgs, _ = data.dataset(data.TRAIN_SEED + 1000 * args.seed, args.batch, start=index)
        index += args.batch
        x = to_tensor(imgs)
        if args.crop and step <= args.steps - args.full_steps:  # token-aligned crop, same for the batch
            g = torch.Generator().manual_seed(args.seed * 100003 + step)
            y0, x0 = (4 * torch.randint(0, (data.IMAGE_SIZE - args.crop) // 4 + 1, (2,), generator=g)).tolist()
            x = x[:, :, y0:y0 + args.crop, x0:x0 + args.crop]
        zq, idx, vq_loss, flat = quantize(vq, x)
        rec = vq.decoder(vq.post_quant_conv(zq))
        rec_loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        loss = rec_loss + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        usage.mul_(0.9).index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        if step % 50 == 0 and step < 0.8 * args.steps:  # restart dead codes from encoder outputs
            dead = (usage < 1e-3).nonzero().squeeze(1)
            if len(dead):
                pick = flat[torch.randint(len(flat), (len(dead),))]
                with torch.no_grad():
                    vq.quantize.embedding.weight[dead] = pick + 0.01 * torch.randn_like(pick)
                usage[dead] = 1.0
        if step % 25 == 0 or step == 1:
            used = int((usage > 1e-3).sum())
            print(f"step {step}/{args.steps} rec {rec_loss.item():.4f} vq {vq_loss.item():.4f} "
                  f"codes {used} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
        if args.minutes is not None and time.time() - t0 > 60 * args.minutes:
            print(f"time limit reached at step {step}", flush=True)
            break
    torch.save({"model": vq.state_dict(), "steps": step, "seed": args.seed}, args.out)
    print(f"saved {args.out} after {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
