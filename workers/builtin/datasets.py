"""The built-in models' training data and evaluator, by model name.

Each dataset module (shapes.py, photos.py) has the same face: `CLASS_NAMES`, `NUM_CLASSES`,
`IMAGE_SIZE`, `TRAIN_SEED`, `HELDOUT_SEED` and `dataset(seed, count, start)` -> (uint8 images
[n, S, S, 3], labels). The training scripts, the evaluator and `tune` find a model's data and its
classifier here, so a third built-in model is one entry below.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from linegen.workers.builtin import photos, shapes
from linegen.workers.builtin.weights import WEIGHTS


@dataclass(frozen=True)
class BuiltinData:
    data: ModuleType  # the dataset module
    classifier: str  # the evaluator classifier's weights


BUILTIN_DATA = {  # by the name of the registered model trained on it
    "linegen-shapes-c2i": BuiltinData(shapes, str(WEIGHTS / "shapes_classifier.pt")),
    "linegen-photos-c2i": BuiltinData(photos, str(WEIGHTS / "photos_classifier.pt")),
}


def builtin_data(model: str) -> BuiltinData | None:
    """The data and evaluator of a built-in model; None for any other model."""
    return BUILTIN_DATA.get(model)
