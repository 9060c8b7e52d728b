"""`linegen tune`: which cache setting keeps a model closest to its full cache at a memory ratio.

Every candidate (a policy, or LineAR with a named option set: workers/cache/presets.py) uses the
same visual budget, so the same cache bytes; they differ only in which tokens they keep. Each is
teacher-forced on the full cache's own samples of calibration items (classes in turn, or for a
text-to-image model prompts in turn: the user's `--prompts` or the shipped calibration_prompts.txt;
the model's sampling defaults, seeds disjoint from `linegen eval`'s) and scored by the mean
KL(full || candidate) of the guided next-token distributions and their top-1 agreement, the
columns of `linegen eval` that are steady at a few dozen samples (benchmarks/RESULTS.md). The
lowest-KL few (`--finalists`, 3) then generate the items free-running and are judged on those
images against the full cache's (linegen/quality/sample_check.py): the lowest-KL one wins unless
another's samples stay clearly closer (beyond twice the paired standard error), so a setting whose
samples drift is never chosen on logits alone. Nothing here imports torch at module
level (jobs/ rule).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from typing import Callable

from linegen.errors import UserError
from linegen.settings.candidates import Candidate
from linegen.quality.evaluate import (CALIBRATION_ITEMS, CALIBRATION_SEED, EvalOptions, default_classifier,
                                      estimate_line, load_checked, requests_for)
from linegen.quality.sample_check import FINALISTS, SampleJudge, closer
from linegen.settings.cache_choice import CacheChoice, recommended
from linegen.settings.model_choice import ModelChoice
from linegen.workers.builtin.datasets import builtin_data
from linegen.workers.cache import CacheConfigError, make_policy, parse_ratio

CANDIDATES: tuple[Candidate, ...] = (
    Candidate("streaming"), Candidate("h2o"), Candidate("snapkv"), Candidate("rkv"),
    Candidate("linear", "paper"),
    Candidate("linear", "anchor-line"), Candidate("linear", "cfg-pair"), Candidate("linear", "recent-2"),
    Candidate("linear", "decay"), Candidate("linear", "column-prior"),
    Candidate("linear", "structure"), Candidate("linear", "accumulate"), Candidate("linear", "accumulate-1"),
    Candidate("linear", "accumulate-decay"),
    Candidate("linear", "accumulate-prior"),
    # the same bytes shared per head by the model's attention profile (workers/cache/head_profile.py):
    # the best LineAR setting of each built-in model with per-head budgets (benchmarks/RESULTS.md).
    # (H2O's recency window is a share of each head's budget, so a head given one line keeps half
    # of it: `h2o+heads` is measurable with --policies, but lost to plain h2o on the shapes model)
    Candidate("linear", "accumulate", per_head=True), Candidate("linear", "cfg-pair", per_head=True),
)  # LineAR's defaults are `accumulate` (workers/cache/linear.py), so plain `linear` is not listed twice


@dataclass(frozen=True)
class TuneOptions:
    model: ModelChoice
    ratio: str = "1/6"
    samples: int = CALIBRATION_ITEMS
    seed: int = CALIBRATION_SEED
    max_batch: int = 32
    candidates: tuple[Candidate, ...] = CANDIDATES
    cfg_scale: float | None = None  # None: the model's defaults
    top_k: int | None = None
    temperature: float | None = None
    prompts: tuple[str, ...] = ()  # text-to-image models: calibration prompts (empty: the shipped ones)
    finalists: int = FINALISTS  # lowest-KL candidates judged on generated samples; 0: KL alone


def calibration_prompts() -> tuple[str, ...]:
    """The shipped calibration prompts: varied subjects, styles and layouts, one per line."""
    text = resources.files("linegen.quality").joinpath("calibration_prompts.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class CandidateScore:
    label: str
    policy: str
    options: dict  # every option of the built policy, explicit (what a config entry records)
    kl_mean: float | None  # None: the candidate cannot hold this budget (see `error`)
    top1_agreement: float | None
    wall_s: float
    error: str | None = None
    # finalists only (linegen/quality/sample_check.py): paired distance of its generated samples to
    # the full cache's (0 = the same images, ~1 = unrelated ones), and their class accuracy where
    # the model ships a classifier
    sample_distance: float | None = None
    sample_accuracy: float | None = None
    sample_items: tuple[float, ...] = ()  # each item's distance (the paired comparison uses them)

    def cache(self, ratio: str) -> CacheChoice:
        return CacheChoice(self.policy, ratio, None, dict(self.options))


@dataclass(frozen=True)
class TuneResult:
    model: str
    ratio: str
    budget_tokens: int
    num_tokens: int
    samples: int
    seed: int
    sampling: dict
    rows: tuple[CandidateScore, ...]
    best: CandidateScore
    wall_s: float
    device: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    shipped: str | None = None  # the candidate that is the model's shipped setting (what `--cache auto` uses untuned)
    calibration: str = "classes in turn"  # what the items are: classes, or which prompts
    finalists: int = 0  # distinct settings also judged on their generated samples (the choice is among them)
    head_shares: str = ""  # what the `+heads` candidates used, measured on the calibration items

    def choice(self) -> CacheChoice:
        return self.best.cache(self.ratio)

    def to_dict(self) -> dict:
        return {**asdict(self), "choice": self.choice().to_json()}


def check_prompts_allowed(spec) -> None:
    """Calibration prompts are for text-to-image models; a class-conditional one calibrates on its classes."""
    if spec.gpt.cond != "t2i":
        raise UserError(f"--prompts is for text-to-image models; {spec.name} is class-conditional "
                        "(it calibrates on its classes)")


def _check(opts: TuneOptions, spec) -> None:
    if opts.prompts:
        check_prompts_allowed(spec)
    if opts.samples < 1 or opts.max_batch < 1:
        raise UserError("--samples and --max-batch must be >= 1")
    if opts.finalists < 0:
        raise UserError(f"--finalists must be >= 0 (0: the KL ranking alone), got {opts.finalists}")
    try:
        if parse_ratio(opts.ratio) >= 1:
            raise UserError("--cache-ratio must be below 1: at 1 every policy keeps the full cache")
    except CacheConfigError as e:
        raise UserError(str(e)) from None
    if not opts.candidates:
        raise UserError("no candidates to measure")


def _candidate_engines(opts: TuneOptions, model, batch: int, shares: str) -> tuple[dict, dict, int | None]:
    """Every candidate's engine, built before any is measured: one that cannot hold the budget is
    a row (with its error), not a failure. -> (label -> (candidate, policy, engine), rows so far,
    the budget in tokens)."""
    spec = model.spec
    engines, rows_by_label, budget = {}, {}, None
    for cand in opts.candidates:
        try:
            policy = cand.cache(opts.ratio, shares).build(spec.prefix_len, spec.grid)
        except UserError as e:
            rows_by_label[cand.label] = CandidateScore(cand.label, cand.policy, {}, None, None, 0.0, str(e))
            continue
        engines[cand.label] = (cand, policy, model.engine(policy, max_batch=batch, images=False))
        budget = policy.budget(engines[cand.label][2].layout)
    if not engines:
        raise UserError(f"no candidate fits a budget of {opts.ratio} on {spec.name}: "
                        + "; ".join(r.error for r in rows_by_label.values()))
    return engines, rows_by_label, budget


def tune(opts: TuneOptions, log: Callable[[str], None] = lambda m: None) -> TuneResult:
    """Rank every candidate by teacher-forced KL on the calibration items, then judge the best
    few on their generated samples (linegen/quality/sample_check.py) and pick the one that holds."""
    t_start = time.perf_counter()
    model = load_checked(opts.model, lambda spec: _check(opts, spec), text=True)
    spec = model.spec
    requests, calibration = _calibration(opts, model)
    batch = min(opts.max_batch, opts.samples)
    log(f"{len(opts.candidates)} candidates x {opts.samples} calibration items at {opts.ratio}; "
        "a time estimate follows the first wave")
    full = model.engine(make_policy("full"), max_batch=batch, images=opts.finalists > 0)
    shares = ""
    if any(c.per_head for c in opts.candidates):
        from linegen.workers.cache.head_profile import measure_shares

        shares = measure_shares(model, opts.ratio, requests, batch)
        log(f"head shares at {opts.ratio} (each head's part of the budget, from its attention): {shares}")
    engines, rows_by_label, budget = _candidate_engines(opts, model, batch, shares)
    scores, full_tokens = _rank_by_kl(opts, full, engines, requests, batch, log)
    rows_by_label.update(scores)
    rows = tuple(rows_by_label[c.label] for c in opts.candidates)
    rows = _judge_finalists(opts, model, full, full_tokens, engines, rows, requests, log)
    judged = [r for r in rows if r.sample_distance is not None]
    best = _choose(judged) if judged else min((r for r in rows if r.kl_mean is not None), key=_kl_order)
    sp = requests[0].sampling

    rec = recommended(spec)
    rec_options = rec.build().options()
    shipped = next((r.label for r in rows if r.policy == rec.policy and r.options == rec_options), None)
    return TuneResult(shipped=shipped, calibration=calibration, model=spec.name, ratio=opts.ratio,
                      budget_tokens=budget, num_tokens=spec.num_tokens, samples=opts.samples, seed=opts.seed,
                      sampling={"cfg_scale": sp.cfg_scale, "top_k": sp.top_k, "temperature": sp.temperature},
                      rows=rows, best=best, wall_s=round(time.perf_counter() - t_start, 1), device=str(model.device),
                      finalists=len({(r.kl_mean, r.top1_agreement) for r in judged}), head_shares=shares)


def _kl_order(row: CandidateScore) -> tuple:
    """Lowest KL first; ties: the higher top-1 agreement."""
    return row.kl_mean, -row.top1_agreement


def _choose(judged: list) -> CandidateScore:
    """The lowest-KL finalist, unless another's samples are clearly closer to the full cache's."""
    order = sorted(judged, key=_kl_order)
    best = order[0]
    for row in order[1:]:
        if closer(row.sample_items, best.sample_items):
            best = row
    return best


def _calibration(opts: TuneOptions, model) -> tuple[list, str]:
    """The calibration requests (classes, or prompts in turn) and a few words on what they are."""
    ev = EvalOptions(model=opts.model, seed=opts.seed, cfg_scale=opts.cfg_scale, top_k=opts.top_k)
    prompts = opts.prompts or calibration_prompts()
    requests = requests_for(ev, model.spec, opts.samples, text=model.text, prompts=prompts)
    if opts.temperature is not None:
        requests = [replace(r, sampling=r.sampling.with_overrides(temperature=opts.temperature)) for r in requests]
    if model.text is None:
        return requests, "classes in turn"
    source = "of your --prompts" if opts.prompts else "shipped prompts"
    return requests, f"{min(len(prompts), opts.samples)} {source} in turn"


def _rank_by_kl(opts: TuneOptions, full, engines: dict, requests: list, batch: int,
                log: Callable[[str], None]) -> tuple[dict, "object"]:
    """Every candidate teacher-forced on the full cache's own samples -> (label -> CandidateScore,
    the full cache's sampled tokens [n, N])."""
    import torch

    from linegen.quality.fidelity import divergence

    kl_sum = {label: 0.0 for label in engines}
    agree = {label: 0.0 for label in engines}
    spent = {label: 0.0 for label in engines}
    steps, full_tokens = 0, []
    for w0 in range(0, len(requests), batch):
        wave = requests[w0:w0 + batch]
        ref: list = []
        # The full cache's own sample; its guided distributions at each step are the reference.
        t_ref = time.perf_counter()
        tokens = full.run_wave(wave, on_logits=lambda _s, g: ref.append(torch.log_softmax(g.float(), -1))).tokens
        full_tokens.append(tokens)
        steps += tokens.numel()
        if w0 == 0:  # say how long before the long part: each candidate's pass costs about one such wave
            passes = 1 + len(engines) + min(opts.finalists, len(engines))
            log(estimate_line(time.perf_counter() - t_ref, waves=-(-len(requests) // batch), passes=passes,
                              what=f"{len(engines)} candidates x {len(requests)} items, "
                                   f"{min(opts.finalists, len(engines))} finalists judged on samples"))
        for label, (_cand, _policy, engine) in engines.items():
            t0 = time.perf_counter()
            acc: dict = {"kl": 0.0, "agree": 0.0}  # device tensors after the first step: no sync per step

            def compare(step, g, acc=acc):
                r, got = ref[step], torch.log_softmax(g.float(), -1)
                kl, agree = divergence(r, got)
                acc["kl"] = acc["kl"] + kl.sum()
                acc["agree"] = acc["agree"] + agree.sum()

            engine.run_wave(wave, forced=tokens, on_logits=compare)
            kl_sum[label] += float(acc["kl"])
            agree[label] += float(acc["agree"])
            spent[label] += time.perf_counter() - t0
            log(f"{label:24s} KL {kl_sum[label] / steps:.4g} top-1 {agree[label] / steps:.3f} "
                f"(items {w0 + len(wave)}/{len(requests)}, {spent[label]:.0f}s)")
        del ref
    scores = {label: CandidateScore(label, cand.policy, policy.options(), kl_sum[label] / steps,
                                    agree[label] / steps, round(spent[label], 2))
              for label, (cand, policy, _engine) in engines.items()}
    return scores, torch.cat(full_tokens)


def _judge_finalists(opts: TuneOptions, model, full, full_tokens, engines: dict, rows: tuple, requests: list,
                     log: Callable[[str], None]) -> tuple:
    """The `finalists` lowest-KL candidates generate the items free-running; each row gets its
    sample distance (and class accuracy where the model ships a classifier)."""
    measured = sorted((r for r in rows if r.kl_mean is not None), key=_kl_order)
    # Candidates with the very same KL and top-1 kept the same tokens on every item (presets can
    # coincide at a small budget): one of them is judged for all, and the finalists are distinct.
    finalists: dict = {}  # (KL, top-1) -> the label judged for it
    for r in measured:
        if len(finalists) < opts.finalists or (r.kl_mean, r.top1_agreement) in finalists:
            finalists.setdefault((r.kl_mean, r.top1_agreement), r.label)
    if not finalists:
        return rows
    spec = model.spec
    classifier = default_classifier(spec.name) if builtin_data(spec.name) is not None else None
    judge = SampleJudge(full.decode_images, full_tokens, requests, classifier, spec.gpt.num_classes)
    scores = {}
    for key, label in finalists.items():
        t0 = time.perf_counter()
        scores[key] = (judge.score(engines[label][2]), time.perf_counter() - t0)
        acc = "" if scores[key][0].accuracy is None else f", class accuracy {scores[key][0].accuracy:.3f}"
        log(f"{label:24s} on samples: distance to full {scores[key][0].distance:.3f}{acc}")
    judged = []
    for row in rows:
        key = (row.kl_mean, row.top1_agreement)
        if key in scores:
            score, spent = scores[key]
            row = replace(row, sample_distance=round(score.distance, 4), sample_accuracy=score.accuracy,
                          sample_items=score.per_item,
                          wall_s=round(row.wall_s + (spent if finalists[key] == row.label else 0.0), 2))
        judged.append(row)
    return tuple(judged)


def render_table(result: TuneResult) -> str:
    """Markdown table, best first is not imposed: rows stay in candidate order, the choice is marked."""
    s = result.sampling
    head = (f"model {result.model}, ratio {result.ratio} ({result.budget_tokens} of {result.num_tokens} visual "
            f"tokens kept by every candidate), {result.samples} calibration items ({result.calibration}, seed {result.seed}) "
            f"teacher-forced on the full cache's samples, cfg {s['cfg_scale']}, top-k {s['top_k']}, "
            f"temperature {s['temperature']}; {result.device}, {result.wall_s:.0f} s")
    if result.finalists:
        head += (f"; the {result.finalists} lowest-KL candidates judged on their generated samples "
                 "(distance to the full cache's image of the same seed: 0 = the same, ~1 = unrelated); "
                 "the lowest-KL one is chosen unless another's samples are closer by more than "
                 "twice the paired standard error")
    lines = [head, "", "| candidate | KL (nats) | top-1 agree | sample distance | class accuracy | s | |",
             "|---|---|---|---|---|---|---|"]
    for r in result.rows:
        if r.kl_mean is None:
            lines.append(f"| {r.label} | - | - | - | - | - | does not fit: {r.error} |")
            continue
        marks = (["**chosen**"] if r.label == result.best.label else []) + \
            (["shipped default"] if r.label == result.shipped else [])
        mark = ", ".join(marks)
        kl = f"{r.kl_mean:.4f}" if r.kl_mean >= 1e-3 else f"{r.kl_mean:.2e}"
        dist = "-" if r.sample_distance is None else f"{r.sample_distance:.3f}"
        acc = "-" if r.sample_accuracy is None else f"{r.sample_accuracy:.3f}"
        lines.append(f"| {r.label} | {kl} | {r.top1_agreement:.3f} | {dist} | {acc} | {r.wall_s:.0f} | {mark} |")
    return "\n".join(lines)
