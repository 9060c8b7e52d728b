"""`linegen tune`'s second stage: its best few candidates judged on the images they generate.

Teacher-forced KL ranks every candidate cheaply, but a low KL has picked a setting whose free-running
samples were the worst of its group (benchmarks/RESULTS.md, 1/8 on the built-in model): small
per-step differences compound once sampling follows the compressed cache's own choices. So the
finalists (the lowest KL) also generate the calibration items free-running, with the seeds of the
full cache's samples, and each finalist's images are compared with the full cache's image of the
same seed:

  * sample distance: the mean distance between a finalist's image and the full cache's image of
    the same seed, in a feature space, over the mean distance between two different full-cache
    images (0: the same images; about 1: as unrelated as two different samples). Pairing by seed
    keeps the measure steady at a few dozen items, where an unpaired FD is mostly noise.
  * features: the model's evaluator classifier where it ships one (the built-in model: its
    128-d features, and class accuracy of the samples as a second column), else the images
    themselves pooled to 8x8 RGB (any model, nothing to download).

The choice is the lowest-KL finalist unless another finalist's samples are closer to the full
cache's by more than twice the standard error of the paired per-item differences (`closer`). At a
few dozen items the sample distance is noisy: on the built-in model at 1/6 it once ranked the
per-head setting last of three by 0.03, where 100 evaluation samples put it 6 points of class
accuracy ahead of both others; KL over 32 x 576 steps is the steadier measure, so samples overrule
it only when they show a difference. Nothing here imports torch at module level (the jobs/ rule
for the quality package).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


FINALISTS = 3  # candidates judged on samples after the KL ranking; 0: the KL ranking alone
MARGIN_SE = 2.0  # how many standard errors closer a finalist's samples must be to overrule the KL order
POOLED = 8  # the pooled-pixel features: an 8x8 RGB thumbnail


@dataclass(frozen=True)
class SampleScore:
    distance: float  # paired feature distance to the full cache's samples, relative (see above)
    accuracy: float | None  # class accuracy of the samples, where the model ships a classifier
    per_item: tuple[float, ...] = ()  # the relative distance of each item (their mean is `distance`)


def closer(challenger: tuple[float, ...], incumbent: tuple[float, ...]) -> bool:
    """Are the challenger's samples closer to the full cache's than the incumbent's, by more than
    MARGIN_SE standard errors of the paired per-item differences (same items, same seeds)?"""
    import numpy as np

    d = np.asarray(incumbent, dtype=float) - np.asarray(challenger, dtype=float)
    if len(d) < 2:
        return bool(d.mean() > 0) if len(d) else False
    return bool(d.mean() > MARGIN_SE * d.std(ddof=1) / np.sqrt(len(d)))


def _pooled_pixels(images):
    """uint8 images [n, H, W, 3] -> [n, 3*POOLED*POOLED] in [0, 1]."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return F.adaptive_avg_pool2d(x, POOLED).flatten(1).double().numpy()


class SampleJudge:
    """The full cache's samples of the calibration items, decoded and featurised once; `score`
    generates the same items with a candidate's engine and compares them by seed."""

    def __init__(self, decode_images: Callable, full_tokens, requests: list,
                 classifier: str | None = None, num_classes: int = 0):
        import numpy as np

        self.decode_images, self.requests = decode_images, requests
        self.classifier = None
        if classifier is not None and Path(classifier).is_file():
            from linegen.workers.builtin.classifier import load_classifier

            self.classifier = load_classifier(classifier, num_classes)
        self.full, _ = self._features(full_tokens)
        n = len(self.full)
        # how far apart two different full-cache samples are: the unit of the distance
        others = np.linalg.norm(self.full - np.roll(self.full, 1, axis=0), axis=1) if n > 1 else np.ones(1)
        self.unit = float(others.mean()) or 1.0

    def _features(self, tokens):
        images = self.decode_images(tokens)
        if self.classifier is None:
            return _pooled_pixels(images), None
        from linegen.workers.builtin.classifier import classify

        preds, feats = classify(self.classifier, images)
        return feats, preds

    def score(self, engine) -> SampleScore:
        import numpy as np

        feats, preds = self._features(engine.run_waves(self.requests)[0])
        per_item = np.linalg.norm(feats - self.full, axis=1) / self.unit
        accuracy = None
        if preds is not None:
            wanted = np.array([r.class_id for r in self.requests])
            accuracy = float((preds == wanted).mean())
        return SampleScore(float(per_item.mean()), accuracy, tuple(round(float(x), 4) for x in per_item))
