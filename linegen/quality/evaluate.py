"""The quality evaluation of cache policies on the built-in model (`linegen eval` / `linegen grid`).

For every policy and ratio, the same requests (same classes, same seeds) are decoded with the
Engine in batched waves, and compared with the full cache:
  * class accuracy: the shipped shapes classifier's accuracy on the generated images;
  * FD (real): Fréchet distance between generated and real held-out images in the classifier's
    128-d feature space (lower is better); FD (full): the same against the full cache's samples;
  * token match: fraction of tokens equal to the full cache's, same seed (sampling diverges after
    the first difference, so this is a strict measure);
  * fidelity, teacher-forced on the full cache's own samples: mean KL(full || policy) per step and
    top-1 agreement of the guided next-token distributions (linegen/quality/fidelity.py).
Nothing here imports torch at module level (jobs/ rule); the work happens in `evaluate()`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from linegen.errors import UserError
from linegen.settings.candidates import Candidate
from linegen.settings.cache_choice import POLICY_NAMES, check_candidates
from linegen.settings.model_choice import ModelChoice
from linegen.workers.cache import CacheConfigError
from linegen.workers.units import duration

if TYPE_CHECKING:  # typing only: the runner loads torch
    from linegen.workers.runner import LoadedModel

DEFAULT_POLICIES = ("full", "linear", "linear/paper") + tuple(p for p in POLICY_NAMES if p not in ("full", "linear"))
DEFAULT_RATIOS = ("1/4", "1/6", "1/8")
# The calibration items `tune` chooses on and `+heads` entries measure their head shares on: request
# seeds derive from the seed (eval's default is 0), so seed 1 keeps the items a setting is chosen
# on apart from those it is judged on.
CALIBRATION_SEED = 1
CALIBRATION_ITEMS = 32


def estimate_line(first_s: float, *, waves: int, passes: int, what: str) -> str:
    """'estimate: about 3m10s for 15 candidates x 8 items (first wave 11s)': the time of one timed
    wave times the waves still to run (every pass of every wave costs about the same)."""

    left = max(0.0, first_s * (waves * passes - 1))
    return f"estimate: about {duration(left)} more for {what} (first wave took {duration(first_s)})"


def _evaluator(model: str | None):
    """A built-in model's data and classifier; the default (shapes) model's for any other model,
    whose classifier and FD then only compare policies with each other."""
    from linegen.workers.builtin.datasets import BUILTIN_DATA, builtin_data
    from linegen.workers.models.registry import DEFAULT_MODEL

    return builtin_data(model or DEFAULT_MODEL) or BUILTIN_DATA[DEFAULT_MODEL]


def default_classifier(model: str | None = None) -> str:
    """The evaluator classifier shipped for a built-in model (the shapes one for any other model)."""
    return _evaluator(model).classifier


def heldout_data(model: str):
    """The dataset module whose held-out images are a model's real reference."""
    return _evaluator(model).data


@dataclass(frozen=True)
class EvalOptions:
    model: ModelChoice
    policies: tuple[str, ...] = DEFAULT_POLICIES
    ratios: tuple[str, ...] = DEFAULT_RATIOS
    samples: int = 500  # per policy x ratio, classes in turn
    fidelity_samples: int = 64  # teacher-forced fidelity on the first K of them
    real_samples: int = 2000  # real held-out images for the FD reference
    seed: int = 0
    cfg_scale: float | None = None  # None: the model's default
    top_k: int | None = None
    max_batch: int = 64
    classifier: str | None = None  # None: the one shipped for the model

    def classifier_path(self, spec) -> str:
        return self.classifier or default_classifier(spec.name)


def _build(entry: str, ratio: str | None, shares: str = ""):
    return Candidate.parse(entry).cache(ratio, shares).build()


def _head_shares(model, ev: "EvalOptions", ratio: str) -> str:
    """The shares of `+heads` entries at `ratio`, measured on the calibration items (tune's)."""
    from linegen.workers.cache.head_profile import measure_shares

    calibration = requests_for(replace(ev, seed=CALIBRATION_SEED), model.spec, CALIBRATION_ITEMS)
    return measure_shares(model, ratio, calibration, CALIBRATION_ITEMS)


def _check(opts: EvalOptions, spec) -> None:
    check_candidates(opts.policies, opts.ratios)
    if opts.samples < 2 or opts.max_batch < 1 or opts.fidelity_samples < 0:
        raise UserError("--samples must be >= 2, --max-batch >= 1 and --fidelity-samples >= 0")
    if spec.gpt.cond != "c2i":
        raise UserError(f"model {spec.name} is text-conditional; the evaluation needs a class-conditional model")
    if not Path(opts.classifier_path(spec)).is_file():
        raise UserError(f"classifier {opts.classifier_path(spec)}: no such file")


def requests_for(opts: EvalOptions, spec, count: int, *, text=None, prompts: tuple[str, ...] = ()):
    """`count` requests with seeds from --seed: classes in turn, or with ``text`` (the model's
    prompt encoder) the prompts in turn."""
    from linegen.workers.engine import GenRequest

    sp = spec.sampling(cfg_scale=opts.cfg_scale, top_k=opts.top_k)
    seeds = [opts.seed * 1_000_003 + i for i in range(count)]
    if text is None:
        n_cls = spec.gpt.num_classes
        return [GenRequest(seed=s, class_id=i % n_cls, sampling=sp) for i, s in enumerate(seeds)]
    encoded = text.encode([prompts[i % len(prompts)] for i in range(count)])
    return [GenRequest(seed=s, caption=e.features, caption_mask=e.mask, sampling=sp) for s, e in zip(seeds, encoded)]


def _logprobs(engine, requests, tokens, max_batch: int):
    """Guided next-token log-probabilities [n, N, V] under teacher forcing on `tokens`."""
    import torch

    from linegen.quality.fidelity import guided_logprobs

    return torch.cat([guided_logprobs(engine, requests[i:i + max_batch], tokens[i:i + max_batch])
                      for i in range(0, len(requests), max_batch)])


def _real_reference(clf, data, opts: EvalOptions, log: Callable[[str], None]):
    """Real held-out images, and a second real set of `samples` images for the FD floor ->
    (the reference figures, the real images' features, warnings about a too-small sample)."""
    from linegen.workers.builtin.classifier import classify, frechet_distance

    real, real_labels = data.dataset(data.HELDOUT_SEED, opts.real_samples)
    real_pred, real_feats = classify(clf, real)
    real2, real2_labels = data.dataset(data.HELDOUT_SEED + 1, opts.samples)
    _, real2_feats = classify(clf, real2)
    reference = {"real_accuracy": float((real_pred == real_labels).mean()), "real_images": opts.real_samples,
                 "fd_real_vs_real": frechet_distance(real2_feats, real_feats)}
    log(f"classifier accuracy on {opts.real_samples} real held-out images: {reference['real_accuracy']:.4f}; "
        f"FD floor (real {opts.samples} vs real {opts.real_samples}): {reference['fd_real_vs_real']:.3f}")
    warnings = fd_warnings(opts.samples, int(real_feats.shape[1]), reference["fd_real_vs_real"])
    for w in warnings:
        log(f"warning: {w}")
    return reference, real_feats, warnings


def load_checked(choice: ModelChoice, check: Callable, *, text: bool = False) -> "LoadedModel":
    """The model's weights (and, with ``text``, a t2i model's prompt encoder), loaded only after
    ``check(spec)`` passed: a bad option is an error before minutes of loading."""
    from linegen.workers.runner import LoadedModel

    check(choice.spec())
    return LoadedModel.load(choice, text=text)


def evaluate(opts: EvalOptions, log: Callable[[str], None] = lambda m: None) -> dict:
    """-> {"model", "settings", "reference", "rows": [one dict per policy x ratio]}."""
    import numpy as np
    import torch

    from linegen.quality.fidelity import divergence
    from linegen.workers.builtin.classifier import classify, frechet_distance, load_classifier

    t_start = time.perf_counter()
    model = load_checked(opts.model, lambda spec: _check(opts, spec))
    spec = model.spec
    clf = load_classifier(opts.classifier_path(spec), spec.gpt.num_classes)
    n_cls = spec.gpt.num_classes

    reference, real_feats, warnings = _real_reference(clf, heldout_data(spec.name), opts, log)

    requests = requests_for(opts, spec, opts.samples)
    labels = np.arange(opts.samples) % n_cls
    nf = min(opts.fidelity_samples, opts.samples)
    configs = [("full", None)] + [(p, r) for p in opts.policies if p != "full" for r in opts.ratios]
    if "full" not in opts.policies:
        log("(the full cache is always run: it is the reference)")
    log(f"{len(configs)} rows (policy x ratio) of {opts.samples} samples each; "
        "a time estimate follows the first (the full cache's)")
    rows, full, shares = [], {}, {}
    for name, ratio in configs:
        if Candidate.parse(name).per_head and ratio not in shares:
            shares[ratio] = _head_shares(model, opts, ratio)
            log(f"head shares at {ratio} (measured on the calibration items): {shares[ratio]}")
        try:
            policy = _build(name, ratio, shares.get(ratio, ""))
            engine = model.engine(policy, max_batch=opts.max_batch, compile=opts.model.compile)
        except CacheConfigError as e:
            raise UserError(f"{name} at {ratio}: {e}") from None
        t0 = time.perf_counter()
        tokens, decode_s = engine.run_waves(requests)
        images = engine.decode_images(tokens)
        pred, feats = classify(clf, images)
        row = {"policy": name, "ratio": ratio or "1", "budget_tokens": min(spec.num_tokens, policy.budget(engine.layout)),
               "class_accuracy": float((pred == labels).mean()), "fd_real": frechet_distance(feats, real_feats)}
        if name == "full":
            full = {"tokens": tokens, "feats": feats}
            row.update(fd_full=0.0, token_match=1.0, kl_mean=0.0, top1_agreement=1.0)
            if nf:
                full["logprobs"] = _logprobs(engine, requests[:nf], tokens[:nf], opts.max_batch)
        else:
            row["fd_full"] = frechet_distance(feats, full["feats"])
            row["token_match"] = float((tokens == full["tokens"]).float().mean())
            if nf:
                got = _logprobs(engine, requests[:nf], full["tokens"][:nf], opts.max_batch)
                ref = full["logprobs"]
                kl, agree = divergence(ref, got)
                row["kl_mean"], row["top1_agreement"] = float(kl.mean()), float(agree.mean())
                del got
        row["decode_s"] = round(decode_s, 2)
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        if len(rows) == 1 and len(configs) > 1:  # the reference run is timed: the others cost about as much
            log(estimate_line(row["wall_s"], waves=len(configs), passes=1,
                              what=f"{len(configs)} policy x ratio rows of {opts.samples} samples"))
        log(f"{name:9s} {row['ratio']:>4s}: acc {row['class_accuracy']:.3f} FD(real) {row['fd_real']:.3f} "
            f"FD(full) {row['fd_full']:.3f} match {row['token_match']:.3f} KL {row.get('kl_mean', float('nan')):.4f} "
            f"top1 {row.get('top1_agreement', float('nan')):.3f} ({row['wall_s']:.0f}s)")
    del torch
    return {
        "model": spec.name, "device": str(model.device),
        "settings": {"samples": opts.samples, "fidelity_samples": nf, "seed": opts.seed,
                     "cfg_scale": requests[0].sampling.cfg_scale, "top_k": requests[0].sampling.top_k,
                     "temperature": requests[0].sampling.temperature,
                     "max_batch": opts.max_batch, "grid": spec.grid, "tokens": spec.num_tokens},
        "reference": reference, "rows": rows, "wall_s": round(time.perf_counter() - t_start, 1),
        "warnings": warnings,
    }


# Fréchet distance estimates a covariance of the classifier's features from n samples: with n
# not well above the feature dimension the estimate is mostly noise (its floor, real vs real,
# is then as large as the differences it is meant to show).
FD_SAMPLES_PER_DIM = 2
FD_MIN_SAMPLES = 200


def fd_warnings(samples: int, dims: int, floor: float) -> list[str]:
    need = max(FD_MIN_SAMPLES, FD_SAMPLES_PER_DIM * dims)
    if samples >= need:
        return []
    return [f"FD at n = {samples} is mostly sampling noise (the classifier's features have {dims} dimensions; "
            f"its real-vs-real floor here is {floor:.3f}): use --samples {need} or more before reading FD; "
            "class accuracy, token match and KL are still meaningful"]


def render_table(report: dict) -> str:
    """Markdown table (terminal and benchmarks/RESULTS.md)."""
    s, ref = report["settings"], report["reference"]
    head = (f"model {report['model']} ({s['grid']}x{s['grid']} tokens), {s['samples']} samples per row "
            f"(classes in turn, same seeds for every policy), cfg {s['cfg_scale']}, top-k {s['top_k']}, "
            f"temperature {s.get('temperature', 1.0)}; "
            f"fidelity teacher-forced on {s['fidelity_samples']} full-cache samples; "
            f"classifier accuracy on {ref['real_images']} real held-out images {ref['real_accuracy']:.2%}; "
            f"FD floor (real vs real) {ref['fd_real_vs_real']:.3f}; {report['device']}, {report['wall_s']:.0f} s in all")
    cols = ["policy", "ratio", "budget (tokens)", "class acc", "FD real", "FD full", "token match", "KL (nats)",
            "top-1 agree", "wall s"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["rows"]:
        lines.append("| " + " | ".join([
            r["policy"], r["ratio"], str(r["budget_tokens"]), f"{r['class_accuracy']:.1%}", f"{r['fd_real']:.3f}",
            f"{r['fd_full']:.3f}", f"{r['token_match']:.3f}", f"{r.get('kl_mean', float('nan')):.4f}",
            f"{r.get('top1_agreement', float('nan')):.3f}", f"{r['wall_s']:.0f}"]) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class GridOptions:
    model: ModelChoice
    out: Path
    policies: tuple[str, ...] = ("full", "linear")
    ratio: str = "1/6"
    per_class: int = 4
    seed: int = 0
    cfg_scale: float | None = None
    top_k: int | None = None
    max_batch: int = 64


def make_grid(opts: GridOptions, log: Callable[[str], None] = lambda m: None) -> dict:
    """A PNG: one block per policy (rows = classes, columns = samples, same seeds), side by side."""
    import numpy as np
    from PIL import Image, ImageDraw

    from linegen.workers.runner import LoadedModel

    spec = opts.model.spec()
    if spec.gpt.cond != "c2i":
        raise UserError(f"model {spec.name} is text-conditional; `grid` needs a class-conditional model")
    if opts.per_class < 1:
        raise UserError("--per-class must be >= 1")
    for name in opts.policies:  # a misspelt policy is refused before the model loads (seconds)
        try:
            _build(name, opts.ratio)
        except CacheConfigError as e:
            raise UserError(str(e)) from None
    model = LoadedModel.load(opts.model, text=False)
    spec = model.spec
    n_cls, k, size = spec.gpt.num_classes, opts.per_class, spec.image_size
    ev = EvalOptions(model=opts.model, seed=opts.seed, cfg_scale=opts.cfg_scale, top_k=opts.top_k)
    requests = requests_for(ev, spec, n_cls * k)  # request i: class i % n_cls
    shares = _head_shares(model, ev, opts.ratio) if any(Candidate.parse(n).per_head for n in opts.policies) else ""
    blocks, labels = [], []
    for name in opts.policies:
        try:
            policy = _build(name, opts.ratio, shares)
            engine = model.engine(policy, max_batch=opts.max_batch, compile=opts.model.compile)
        except CacheConfigError as e:
            raise UserError(str(e)) from None
        t0 = time.perf_counter()
        tokens, _ = engine.run_waves(requests)
        images = engine.decode_images(tokens)
        gap, block = 2, np.full((n_cls * (size + 2), k * (size + 2), 3), 255, dtype=np.uint8)
        for i, img in enumerate(images):
            c, j = i % n_cls, i // n_cls
            block[c * (size + gap):c * (size + gap) + size, j * (size + gap):j * (size + gap) + size] = img
        blocks.append(block)
        labels.append(name if name == "full" else f"{name} {opts.ratio}")
        log(f"{labels[-1]}: {len(images)} images in {time.perf_counter() - t0:.0f}s")
    header, sep = 18, 16
    width = sum(b.shape[1] for b in blocks) + sep * (len(blocks) - 1)
    canvas = Image.new("RGB", (width, blocks[0].shape[0] + header), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for block, label in zip(blocks, labels):
        canvas.paste(Image.fromarray(block), (x, header))
        draw.text((x + 2, 3), label, fill="black")
        x += block.shape[1] + sep
    try:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(opts.out)
    except OSError as e:
        raise UserError(f"cannot write {opts.out}: {e.strerror}") from None
    return {"out": str(opts.out), "model": spec.name, "policies": list(opts.policies), "ratio": opts.ratio,
            "per_class": k, "classes": n_cls, "width": canvas.width, "height": canvas.height}
