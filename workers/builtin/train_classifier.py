"""Train the evaluator's classifier on procedural shapes; report accuracy on held-out images.

    python -m linegen.workers.builtin.train_classifier --out workers/builtin/weights/shapes_classifier.pt

Trained on freshly rendered images (never the same twice), lightly augmented with blur and noise so
that it also reads the slightly soft images a VQ decoder produces. Held-out images come from a
separate seed (shapes.HELDOUT_SEED).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from linegen.workers.builtin.datasets import builtin_data
from linegen.workers.builtin.images import to_tensor
from linegen.workers.builtin.classifier import ShapesClassifier


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    blur = torch.rand(b, 1, 1, 1, generator=g) < 0.5
    soft = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    x = torch.where(blur, soft, x)
    return x + 0.05 * torch.rand(b, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)


@torch.inference_mode()
def accuracy(model: ShapesClassifier, data, count: int) -> float:
    imgs, labels = data.dataset(data.HELDOUT_SEED, count)
    pred = model(to_tensor(imgs)).argmax(1).numpy()
    return float((pred == labels).mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="workers/builtin/weights/shapes_classifier.pt")
    p.add_argument("--model", default="linegen-shapes-c2i", help="the built-in model whose data to classify")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--heldout", type=int, default=2000, help="held-out images for the final accuracy")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    data = builtin_data(args.model).data
    model = ShapesClassifier(data.NUM_CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    t0, index = time.time(), 0
    train_seed = data.TRAIN_SEED + 1000 * args.seed + 17  # a stream of its own, never held-out
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + torch.cos(torch.tensor(step / args.steps * torch.pi))).item()
        imgs, labels = data.dataset(train_seed, args.batch, start=index)
        index += args.batch
        x = augment(to_tensor(imgs), g)
        loss = F.cross_entropy(model(x), torch.from_numpy(labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == 1:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    model.eval()
    acc = accuracy(model, data, args.heldout)
    print(f"held-out accuracy {acc:.4f} on {args.heldout} images (seed {data.HELDOUT_SEED})", flush=True)
    torch.save({"model": model.state_dict()}, args.out)
    print(f"saved {args.out} after {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
