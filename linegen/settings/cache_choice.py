"""Which KV cache policy a job uses (plain data; built into a policy next to the model).

Building the policy needs no torch (workers/cache keeps its policies torch-free), so every cache
setting is checked against the model's grid on the laptop, before a job is submitted.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from linegen.errors import UserError
from linegen.workers.cache import DEFAULT_RATIO, POLICY_NAMES, CacheConfigError, Layout, make_policy, parse_ratio

__all__ = ["DEFAULT_RATIO", "HEADS", "POLICY_NAMES", "CacheChoice"]

# `eval`/`tune`/`grid` entries ending in this get per-head budgets measured on the model
# (linegen/settings/candidates.py)
HEADS = "+heads"


@dataclass(frozen=True)
class CacheChoice:
    policy: str = "full"
    ratio: str | None = None  # "1/6", "0.25"
    lines: int | None = None
    options: dict = field(default_factory=dict)  # policy-specific switches (anchors, recent_lines, ...)

    @classmethod
    def from_flags(cls, policy: str, ratio: str | None, lines: int | None, options: list[str] | None) -> "CacheChoice":
        """--cache-option KEY=VALUE strings -> typed options (ints, floats, true/false, text)."""
        parsed: dict = {}
        for text in options or []:
            key, sep, value = text.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--cache-option must look like KEY=VALUE (e.g. anchors=8), got {text!r}")
            parsed[key.strip().replace("-", "_")] = _typed(value.strip())
        return cls(policy, ratio, lines, parsed)

    def to_json(self) -> dict:
        return asdict(self)

    def build(self, prefix: int | None = None, grid: int | None = None, heads: tuple[int, int] | None = None):
        """The policy object; with a model's prefix and grid, also checked against that layout, and
        with its (layers, heads) the per-head shares against the model's shape."""
        try:
            policy = make_policy(self.policy, ratio=self.ratio, lines=self.lines, **self.options)
            if grid is not None:
                layout = Layout(prefix=prefix or 0, grid=grid)
                policy.check(layout)
                if heads is not None:
                    policy.head_budgets(layout, *heads)
            return policy
        except CacheConfigError as e:
            raise UserError(str(e)) from None
        except TypeError as e:  # an option the policy does not have
            import re

            m = re.search(r"keyword argument '(\w+)'", str(e))
            what = f"has no option {m.group(1)!r}" if m else str(e)
            raise UserError(f"cache policy {self.policy!r} {what} (see --help for --cache-option)") from None

    def effective_ratio(self, prefix: int, grid: int) -> float:
        """Kept visual tokens / all visual tokens on a model's grid (1.0 for the full cache)."""
        layout = Layout(prefix=prefix, grid=grid)
        return min(1.0, self.build().budget(layout) / layout.num_tokens)

    def nominal_ratio(self) -> float | None:
        """The ratio as set (the default where none is given); None for the full cache or a
        budget given in lines (which means a ratio only on a model's grid)."""
        if self.policy == "full" or self.lines is not None:
            return None
        try:
            return parse_ratio(self.ratio or DEFAULT_RATIO)
        except CacheConfigError as e:
            raise UserError(str(e)) from None

    def same_budget(self, other: "CacheChoice") -> bool:
        """Same policy and the same nominal ratio (throughput of one stands for the other)."""
        if self.policy != other.policy:
            return False
        mine, theirs = self.nominal_ratio(), other.nominal_ratio()
        return mine == theirs or (mine is not None and theirs is not None and abs(mine - theirs) < 1e-6)


def _typed(value: str):
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


# `--cache auto`: the setting measured for this model: the user's own (`linegen tune` writes it
# into the config file's [models] entry), else the one shipped with the model (ModelSpec.
# recommended_cache, benchmarks/RESULTS.md), else LineAR with its defaults at the paper's ratio.
AUTO = "auto"
FALLBACK = CacheChoice("linear", DEFAULT_RATIO)


def recommended(spec) -> CacheChoice:
    """The model's own `auto` setting (the config entry, when there is one, comes first: settings.py)."""
    rec = spec.recommended_cache
    if rec is None:
        return FALLBACK
    options = ({"preset": rec.preset} if rec.preset else {}) | ({"head_shares": rec.head_shares} if rec.head_shares else {})
    return CacheChoice(rec.policy, rec.ratio, None, options)


def check_candidates(policies, ratios) -> None:
    """`eval`, `tune`, `bench` and `grid`: every ``POLICY``, ``POLICY/PRESET`` or either with
    ``+heads`` (per-head budgets measured on the model) at every ratio
    checked like `--cache` (schema, preset, ratio) before any model is built or image made."""
    for ratio in ratios:
        try:
            parse_ratio(ratio)
        except CacheConfigError as e:
            raise UserError(f"--cache-ratio: {e}") from None
    for item in policies:
        name, _, preset = item.removesuffix(HEADS).partition("/")
        if item.endswith(HEADS) and name == "full":
            raise UserError(f"{item}: the full cache keeps every token; per-head budgets (+heads) are for "
                            "the compressing policies")
        CacheChoice(name, None, None, {"preset": preset} if preset else {}).build()
