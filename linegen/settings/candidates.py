"""A cache setting as `eval`, `tune` and `grid` name it: `POLICY[/PRESET][+heads]`.

`linear/paper` is LineAR with a named option set (workers/cache/presets.py); `+heads` gives the
setting per-head budgets measured on the model at the ratio it runs at (head_shares.py): the same
total bytes, shared out by how far each head's attention reaches.
"""
from __future__ import annotations

from dataclasses import dataclass

from linegen.settings.cache_choice import HEADS, CacheChoice


@dataclass(frozen=True)
class Candidate:
    policy: str
    preset: str | None = None  # a named option set of the policy; None: its defaults
    options: tuple[tuple[str, object], ...] = ()  # explicit options over the preset (benchmark grids)
    per_head: bool = False  # budgets per (layer, head) from the model's attention profile

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        base, per_head = (text[:-len(HEADS)], True) if text.endswith(HEADS) else (text, False)
        policy, _, preset = base.partition("/")
        return cls(policy, preset or None, (), per_head)

    @property
    def label(self) -> str:
        text = self.policy if self.preset is None else f"{self.policy}/{self.preset}"
        text += HEADS if self.per_head else ""
        return text + "".join(f" {k}={v}" for k, v in self.options)

    def cache(self, ratio: str | None, shares: str = "") -> CacheChoice:
        """The setting at `ratio`; a per-head candidate takes the `shares` measured for it."""
        options = {} if self.preset is None else {"preset": self.preset}
        if self.per_head and shares:
            options["head_shares"] = shares
        return CacheChoice(self.policy, None if self.policy == "full" else ratio, None, {**options, **dict(self.options)})
