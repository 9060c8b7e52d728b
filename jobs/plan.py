"""Expand manifest rows into items and cut them into shards.

Everything here is a pure function of the manifest rows and the job options, so a resumed
job recomputes exactly the same items, seeds and shard ids and can trust existing commit
markers. Seeds come from (job seed, row index, replica) only -- never from the worker, the
batch or the process -- so an image does not change when the cluster layout does.

No torch/ray imports: the CLI plans (and prints totals) on a laptop.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

from linegen.jobs.manifest import MAX_SEED, ManifestRow
from linegen.workers.models.config import SamplingParams

# blake2b personalisation (<= 16 bytes). Bump the version only on purpose: changing the seed
# derivation changes every image of every existing job.
_SEED_DOMAIN = b"linegen/seed/v1"
_FINGERPRINT_DOMAIN = b"linegen/plan/v1"


@dataclass(frozen=True, slots=True)
class Item:
    """One image to generate."""
    item_id: str          # f"r{row:07d}-{replica:05d}"; the user's id is kept in user_id
    row: int
    replica: int
    seed: int
    class_id: int | None
    prompt: str | None
    user_id: str | None
    cfg_scale: float
    temperature: float
    top_k: int
    top_p: float

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(cfg_scale=self.cfg_scale, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p)


@dataclass(frozen=True)
class Shard:
    index: int
    shard_id: str         # "shard-00000"
    items: tuple[Item, ...]


def derive_seed(job_seed: int, row: int, replica: int) -> int:
    """A 63-bit seed from (job seed, row, replica), stable across processes and versions.

    Python's hash() is salted per process, so a keyed blake2b over the decimal text of the
    three ints is used instead; decimal text also makes any int size (and sign) unambiguous.
    """
    for name, value in (("job_seed", job_seed), ("row", row), ("replica", replica)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    message = f"{job_seed}:{row}:{replica}".encode()
    digest = hashlib.blake2b(message, digest_size=8, person=_SEED_DOMAIN).digest()
    return int.from_bytes(digest, "big") & MAX_SEED


def item_id(row: int, replica: int) -> str:
    return f"r{row:07d}-{replica:05d}"


def expand_items(rows: Iterable[ManifestRow], *, job_seed: int,
                 sampling: SamplingParams) -> list[Item]:
    """One item per (row, replica), in row order then replica order.

    Seeds: a row that gives `seed` uses `seed + replica` for replica r, so `seed: 42` with
    `count: 1` reproduces exactly seed 42 (and the manifest check keeps seed + count - 1 within
    63 bits). Otherwise the seed is derive_seed(job_seed, row.index, replica).
    """
    items: list[Item] = []
    for row in rows:
        cfg_scale = sampling.cfg_scale if row.cfg_scale is None else row.cfg_scale
        temperature = sampling.temperature if row.temperature is None else row.temperature
        top_k = sampling.top_k if row.top_k is None else row.top_k
        top_p = sampling.top_p if row.top_p is None else row.top_p
        for replica in range(row.count):
            seed = (row.seed + replica if row.seed is not None
                    else derive_seed(job_seed, row.index, replica))
            items.append(Item(
                item_id=item_id(row.index, replica), row=row.index, replica=replica, seed=seed,
                class_id=row.class_id, prompt=row.prompt, user_id=row.id,
                cfg_scale=float(cfg_scale), temperature=float(temperature), top_k=int(top_k),
                top_p=float(top_p),
            ))
    return items


def shard_id(index: int) -> str:
    return f"shard-{index:05d}"


def plan_shards(items: Sequence[Item], shard_size: int = 1000) -> list[Shard]:
    """Consecutive cuts of `shard_size` items; only the last shard may be smaller."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    items = list(items)
    return [Shard(index=i, shard_id=shard_id(i), items=tuple(items[start:start + shard_size]))
            for i, start in enumerate(range(0, len(items), shard_size))]


def plan_fingerprint(shards: Iterable[Shard]) -> str:
    """A 16-hex-digit digest of the whole plan: shard boundaries and every item's fields.

    A resumed job compares it with the one recorded at submission; if the manifest, the job
    seed, the sampling defaults or the shard size changed, committed shards no longer mean
    what they meant, so resuming must refuse.
    """
    h = hashlib.blake2b(digest_size=8, person=_FINGERPRINT_DOMAIN)
    for shard in shards:
        h.update(f"{shard.index}|{shard.shard_id}|{len(shard.items)}\n".encode())
        for it in shard.items:
            # json.dumps gives one exact text per value (floats via repr), and quotes strings
            # so a prompt containing separators cannot collide with another field layout.
            fields = [it.item_id, it.row, it.replica, it.seed, it.class_id, it.prompt,
                      it.user_id, it.cfg_scale, it.temperature, it.top_k, it.top_p]
            # surrogatepass: valid text hashes as before; a lone surrogate (refused by the manifest
            # rules, but an Item can be built by hand) must not crash the digest.
            h.update(json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            h.update(b"\n")
    return h.hexdigest()
