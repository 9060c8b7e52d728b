"""The procedural, class-conditional "shapes" dataset the built-in model is trained on.

Every image is a pure function of (seed, index): `render(image_seed(seed, i))`. A 96x96 image is
built at three scales:
  * background: a flat colour, or a sky/ground split at a random height, from a muted palette;
  * texture: an optional lattice of small dots over the background (period 8 px);
  * objects: the class decides the shape and the layout; every copy of the object in an image
    has the same colour, size and fill (solid or striped), so the copies far down the image must
    agree with the ones at the top: long-range consistency that a cache which forgets the wrong
    tokens visibly breaks (a bottom copy in the wrong colour or size).
Positions and sizes are multiples of 4 px (one VQ token of the downsample-4 tokenizer), which keeps
the token statistics simple enough for a small model trained on a CPU.
"""
from __future__ import annotations

import numpy as np

from linegen.workers.builtin.images import render_dataset

IMAGE_SIZE = 96

CLASS_NAMES = (
    "circle-pair-diagonal",      # 0: two circles, top-left and bottom-right
    "square-pair-antidiagonal",  # 1: two squares, top-right and bottom-left
    "triangle-pair-vertical",    # 2: two triangles, top centre and bottom centre
    "ring-corners",              # 3: four rings in the corners
    "cross-pair-left",           # 4: two plus signs in the left column, top and bottom
    "horizontal-bars",           # 5: three full-width bars
    "vertical-bars",             # 6: three full-height bars
    "diamond-column",            # 7: three diamonds down the centre
    "target",                    # 8: one large ring with a dot in the middle
    "square-grid",               # 9: a 3x3 grid of small squares
)
NUM_CLASSES = len(CLASS_NAMES)

BACKGROUNDS = np.array([(40, 44, 64), (70, 52, 40), (36, 72, 56), (96, 96, 104), (60, 40, 80), (20, 20, 24)],
                       dtype=np.float32)
OBJECTS = np.array([(230, 60, 50), (250, 200, 40), (60, 180, 240), (90, 220, 100), (240, 130, 220), (245, 245, 240)],
                   dtype=np.float32)

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def _mask(shape: str, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = _YY - cy, _XX - cx
    if shape == "circle":
        return dy * dy + dx * dx <= r * r
    if shape == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == "triangle":  # apex up
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        arm = max(2.0, r / 3)
        return ((np.abs(dy) <= r) & (np.abs(dx) <= arm)) | ((np.abs(dx) <= r) & (np.abs(dy) <= arm))
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    raise ValueError(shape)


def _objects(label: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask [H, W] of the class's objects (same size everywhere in the image)."""
    S = IMAGE_SIZE
    j = lambda: 4 * int(rng.integers(-1, 2))  # noqa: E731  jitter of one token either way
    m = np.zeros((S, S), dtype=bool)
    if label in (0, 1, 2, 4):
        r = 4 * int(rng.integers(3, 5))  # 12 or 16 px
        shape = {0: "circle", 1: "square", 2: "triangle", 4: "cross"}[label]
        a, b = 24 + j(), 72 + j()
        centres = {0: [(a, a), (b, b)], 1: [(a, b), (b, a)], 2: [(a, 48), (b, 48)], 4: [(a, 24), (b, 24)]}[label]
        for cy, cx in centres:
            m |= _mask(shape, cy, cx, r)
    elif label == 3:
        r = 4 * int(rng.integers(2, 4))  # 8 or 12 px
        for cy in (20 + j(), 76 + j()):
            for cx in (20, 76):
                m |= _mask("ring", cy, cx, r)
    elif label in (5, 6):
        half = 2 * int(rng.integers(2, 4))  # bars 8 or 12 px thick
        coord = _XX if label == 6 else _YY
        for c in (16 + j(), 48, 80 - j()):
            m |= np.abs(coord - c) <= half
    elif label == 7:
        r = 4 * int(rng.integers(2, 4))
        cx = 48 + j()
        for cy in (16, 48, 80):
            m |= _mask("diamond", cy, cx, r)
    elif label == 8:
        cy, cx = 48 + j(), 48 + j()
        r = 4 * int(rng.integers(7, 10))  # 28..36 px
        m |= _mask("ring", cy, cx, r) | _mask("circle", cy, cx, 0.25 * r)
    elif label == 9:
        r = 4 * int(rng.integers(1, 3)) + 2  # 6 or 10 px half-width
        for cy in (16, 48, 80):
            for cx in (16, 48, 80):
                m |= _mask("square", cy, cx, r)
    else:
        raise ValueError(f"label must be in 0..{NUM_CLASSES - 1}, got {label}")
    return m


def render(label: int, seed: int) -> np.ndarray:
    """One image of class `label`: uint8 [96, 96, 3], a pure function of (label, seed)."""
    rng = np.random.default_rng(seed)
    S = IMAGE_SIZE
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    img = np.empty((S, S, 3), dtype=np.float32)
    img[:] = bg
    if rng.random() < 0.5:  # sky / ground split
        ground = BACKGROUNDS[rng.integers(len(BACKGROUNDS))] * 0.6 + 30
        img[4 * int(rng.integers(14, 21)):] = ground
    if rng.random() < 0.5:  # dot texture
        phase_y, phase_x = 4 * int(rng.integers(2)), 4 * int(rng.integers(2))
        dots = ((_YY.astype(int) - phase_y) % 8 < 2) & ((_XX.astype(int) - phase_x) % 8 < 2)
        img[dots] = img[dots] * 0.5 + 100
    colour = OBJECTS[rng.integers(len(OBJECTS))]
    mask = _objects(label, rng)
    fill = np.ones((S, S, 1), dtype=np.float32)
    if rng.random() < 0.4:  # striped fill: darker every other 4-px row
        fill = np.where((_YY.astype(int) // 4) % 2 == 0, 1.0, 0.6)[..., None]
    img = np.where(mask[..., None], colour * fill, img)
    return np.clip(img, 0, 255).astype(np.uint8)


def dataset(seed: int, count: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [count, 96, 96, 3] and labels int64 [count] for indices start..start+count-1."""
    return render_dataset(render, NUM_CLASSES, IMAGE_SIZE, seed, count, start)


# Seeds of the splits used by the training scripts and the evaluator (disjoint streams).
TRAIN_SEED = 0
HELDOUT_SEED = 1
