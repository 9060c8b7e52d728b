"""The evaluator's small CNN (one per built-in model): class logits and a feature vector for the Fréchet distance."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linegen.workers.builtin.images import to_tensor

FEATURE_DIM = 128


class ShapesClassifier(nn.Module):
    """RGB in [-1, 1] (any size >= 16 px) -> class logits; `features` is the 128-d penultimate layer."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.convs = nn.Sequential(
            nn.Conv2d(3, w // 2, 3, stride=2, padding=1), nn.GELU(),       # 48
            nn.Conv2d(w // 2, w, 3, stride=2, padding=1), nn.GELU(),       # 24
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),        # 12
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GELU(),    # 6
            nn.AdaptiveAvgPool2d(3),
        )
        self.fc = nn.Linear(2 * w * 9, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return F.gelu(self.fc(self.convs(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def load_classifier(path: str, num_classes: int = 10) -> ShapesClassifier:
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    model = ShapesClassifier(num_classes)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


@torch.inference_mode()
def classify(model: ShapesClassifier, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, S, S, 3] -> (predicted labels [n], features [n, 128] float64)."""
    preds, feats = [], []
    for i in range(0, len(images), batch):
        f = model.features(to_tensor(images[i:i + batch]))
        preds.append(model.head(f).argmax(1).numpy())
        feats.append(f.double().numpy())
    return np.concatenate(preds), np.concatenate(feats)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [n, d] and b [m, d]."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr(sqrt(s1 s2)) from the eigenvalues of sqrt(s1) s2 sqrt(s1) (symmetric PSD): stable, no scipy.
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    mid = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = np.sqrt(np.clip(mid, 0, None)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
