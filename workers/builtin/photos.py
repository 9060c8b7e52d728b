"""The second built-in dataset: class-conditional patches of ten natural photographs.

Where the shapes dataset (shapes.py) is flat colour with exact long-range repeats, these are
natural textures, edges and gradients with no repeat to copy: a cache that keeps the wrong tokens
blurs or breaks the texture rather than miscolouring a copy. One class per photograph; an image is a
64x64 patch of it: a square crop of 64, 128 or 192 px of the 192x192 source, averaged down to 64 px,
maybe mirrored. With a downsample-4 tokenizer that is a 16x16 grid (N = 256), the grid of
LlamaGen's 256-px models, where the shapes model has the 384-px grid (24x24).

The photographs are scikit-image's bundled samples, all public domain or CC0 (astronaut, rocket
and Hubble: NASA/SpaceX public domain; coffee, chelsea, camera: CC0 by their photographers; retina:
CC0; brick: CC0Textures; immunohistochemistry, coins: no known copyright restrictions), centre-cropped
and resized to 192x192 once, shipped as `weights/photos.npz` (650 KB). Every patch is a pure function
of (seed, index), like the shapes.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from linegen.workers.builtin.images import render_dataset
from linegen.workers.builtin.weights import WEIGHTS

IMAGE_SIZE = 64
SOURCE = WEIGHTS / "photos.npz"

CLASS_NAMES = ("astronaut", "coffee", "cat", "rocket", "hubble-deep-field", "immunohistochemistry",
               "retina", "coins", "brick", "cameraman")
NUM_CLASSES = len(CLASS_NAMES)

# crop side in multiples of IMAGE_SIZE (1: full detail, 3: the whole photograph) and their odds
_SCALES = (1, 2, 3)
_SCALE_ODDS = (0.45, 0.4, 0.15)

# Seeds of the splits used by the training scripts and the evaluator (disjoint streams).
TRAIN_SEED = 0
HELDOUT_SEED = 1


@lru_cache(maxsize=1)
def _photos() -> np.ndarray:
    """uint8 [10, 192, 192, 3], read once per process."""
    with np.load(SOURCE) as z:
        return z["images"]


def patch(label: int, seed: int) -> np.ndarray:
    """One patch of photograph `label`: uint8 [64, 64, 3], a pure function of (label, seed)."""
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label must be in 0..{NUM_CLASSES - 1}, got {label}")
    rng = np.random.default_rng(seed)
    src = _photos()[label]
    k = int(rng.choice(_SCALES, p=_SCALE_ODDS))
    side = k * IMAGE_SIZE
    y0, x0 = (int(rng.integers(0, src.shape[i] - side + 1)) for i in (0, 1))
    crop = src[y0:y0 + side, x0:x0 + side].astype(np.float32)
    small = crop.reshape(IMAGE_SIZE, k, IMAGE_SIZE, k, 3).mean(axis=(1, 3))
    if rng.random() < 0.5:
        small = small[:, ::-1]
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def dataset(seed: int, count: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [count, 64, 64, 3] and labels int64 [count] for indices start..start+count-1."""
    return render_dataset(patch, NUM_CLASSES, IMAGE_SIZE, seed, count, start)
