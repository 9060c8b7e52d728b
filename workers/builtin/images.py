"""What every built-in dataset shares: per-image seeds and the tensor form its models read."""
from __future__ import annotations

from typing import Callable

import numpy as np


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` of a dataset with seed `seed` (independent streams per image)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def render_dataset(draw: Callable[[int, int], np.ndarray], num_classes: int, size: int, seed: int, count: int,
                   start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [count, size, size, 3] and labels int64 [count] for indices start..start+count-1:
    image i is `draw(i % num_classes, image_seed(seed, i))`, so classes cycle (any prefix is
    balanced) and an image does not depend on which others are drawn with it."""
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    for i in range(count):
        labels[i] = (start + i) % num_classes
        images[i] = draw(int(labels[i]), image_seed(seed, start + i))
    return images, labels


def to_tensor(images: np.ndarray):
    """uint8 [B, H, W, 3] -> float tensor [B, 3, H, W] in [-1, 1] (the VQ's and classifier's input)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
