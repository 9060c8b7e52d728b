"""`compile: auto|on|off`: which decode path a wave takes, and when compiling on a CPU pays.

  * off: the eager reference path (engine.py): bit-exact, no build cost.
  * on: the static step (step.py), compiled by inductor on a CPU, captured in CUDA graphs on a GPU.
  * auto: on a GPU, as `on` (a capture costs well under a second per shape); on a CPU, `on` only
    when the job is long enough to repay the compile, else `off`:

        estimated eager seconds = row-steps x FLOPs per row-step / EAGER_CPU_FLOPS
        compile when  estimated eager seconds x SAVING[dtype] >= REPAY x estimated compile seconds
        estimated compile seconds = COMPILE_S_PER_LAYER x layers x shapes still to build

    row-steps are the rows (2 per item with guidance) x tokens of the work the caller declared
    (Engine.add_work), or of the wave itself. The constants were measured on this project's 2-core
    CPU VM (benchmarks/RESULTS.md, issue 13); they only place the threshold, so a 2x error in
    them moves it 2x — never the tokens.
  * static (engine-level only, for tests and diagnostics): the static step run eagerly.
"""
from __future__ import annotations

from dataclasses import dataclass

from linegen.workers.models.config import ModelSpec

COMPILE_MODES = ("auto", "on", "off")
ENGINE_MODES = COMPILE_MODES + ("static",)

EAGER_CPU_FLOPS = 50e9  # the eager reference path, fp32, GPT-B at batch 16, 2 threads
COMPILE_S_PER_LAYER = 2.5  # inductor, GPT-B (12 layers) in ~30 s on one thread, empty compile cache
# share of eager decode time the compiled step saves (GPT-B 256, batch 16, one thread: fp32 ~0 —
# the GEMMs are the same kernels —, bf16 ~0.4 — attention and the bf16<->fp32 casts fuse)
SAVING = {"float32": 0.05, "bfloat16": 0.4, "float16": 0.05}
REPAY = 2.0


@dataclass(frozen=True)
class Decision:
    backend: str | None  # a graphs.BACKENDS name, or None for the eager reference path
    reason: str


def row_step_flops(spec: ModelSpec) -> float:
    """FLOPs of one decode step for one row, weights only (attention is a few % of it)."""
    c = spec.gpt
    return 2.0 * (c.n_layer * (4 * c.dim * c.dim + 3 * c.dim * c.ffn_dim) + c.dim * c.vocab_size)


def decide(mode: str, device_type: str, spec: ModelSpec, dtype_name: str, row_steps: int,
           shapes_to_build: int = 1) -> Decision:
    if mode not in ENGINE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "off":
        return Decision(None, "compile off")
    if mode == "static":
        return Decision("static", "static step, not compiled")
    native = "cuda_graph" if device_type == "cuda" else "inductor"
    if mode == "on":
        return Decision(native, "compile on")
    if device_type == "cuda":
        return Decision(native, "auto: CUDA graphs on a GPU")
    if shapes_to_build == 0:
        return Decision(native, "auto: already compiled for this shape")
    eager_s = row_steps * row_step_flops(spec) / EAGER_CPU_FLOPS
    compile_s = COMPILE_S_PER_LAYER * spec.gpt.n_layer * shapes_to_build
    saving = eager_s * SAVING.get(dtype_name, 0.1)
    if saving >= REPAY * compile_s:
        return Decision(native, f"auto: ~{eager_s:.0f} s of eager decoding, compiling (~{compile_s:.0f} s) saves ~{saving:.0f} s")
    return Decision(None, f"auto: ~{eager_s:.0f} s of eager decoding would save ~{saving:.0f} s, "
                          f"under {REPAY:g}x the ~{compile_s:.0f} s compile")
