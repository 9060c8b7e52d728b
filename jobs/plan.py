"""Cut a manifest's rows into shards, and expand a shard into its items.

Everything here is a pure function of the manifest rows and the job options, so a resumed
job recomputes exactly the same items, seeds and shard ids and can trust existing commit
markers. Seeds come from (job seed, row index, replica) only -- never from the worker, the
batch or the process -- so an image does not change when the cluster layout does.

A plan holds rows, not items: a shard is a descriptor (the rows it touches and where in the
first one it starts), and its items are expanded where it is generated. A row with `count`
10^9 costs the driver one row.

No torch/ray imports: the CLI plans (and prints totals) on a laptop.
"""
from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate
from operator import attrgetter
from typing import Iterable, Iterator, Sequence

from linegen.jobs.manifest import MAX_SEED, ManifestRow
from linegen.workers.models.config import SamplingParams

# blake2b personalisation (<= 16 bytes). Bump the version only on purpose: changing the seed
# derivation changes every image of every existing job.
_SEED_DOMAIN = b"linegen/seed/v1"
_FINGERPRINT_DOMAIN = b"linegen/plan/v1"  # the item-by-item digest of plan.json files before version 2
_FINGERPRINT_DOMAIN_V2 = b"linegen/plan/v2"
FINGERPRINT_VERSION = 2
_FINGERPRINT_CHUNK = 65536  # rows per repr() in Plan.fingerprint; part of the digest's definition


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
    extra: tuple = ()  # the row's kept manifest columns, (name, value) pairs (--keep-columns)

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(cfg_scale=self.cfg_scale, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p)


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


def shard_id(index: int) -> str:
    return f"shard-{index:05d}"


def shard_index(shard_id_: str) -> int | None:
    """The index in a shard id ("shard-00042" -> 42), or None for anything else."""
    prefix, _, number = shard_id_.rpartition("-")
    return int(number) if prefix == "shard" and number.isdigit() else None


def _row_sampling(row: ManifestRow, sampling: SamplingParams) -> tuple[float, float, int, float]:
    """A row's sampling values: its own where it gives them, else the job's defaults."""
    return (float(sampling.cfg_scale if row.cfg_scale is None else row.cfg_scale),
            float(sampling.temperature if row.temperature is None else row.temperature),
            int(sampling.top_k if row.top_k is None else row.top_k),
            float(sampling.top_p if row.top_p is None else row.top_p))


def row_items(row: ManifestRow, replicas: range, *, job_seed: int, sampling: SamplingParams) -> list[Item]:
    """The items of `row` for the given replicas.

    Seeds: a row that gives `seed` uses `seed + replica` for replica r, so `seed: 42` with
    `count: 1` reproduces exactly seed 42 (and the manifest check keeps seed + count - 1 within
    63 bits). Otherwise the seed is derive_seed(job_seed, row.index, replica).
    """
    cfg_scale, temperature, top_k, top_p = _row_sampling(row, sampling)
    return [Item(item_id=item_id(row.index, r), row=row.index, replica=r,
                 seed=row.seed + r if row.seed is not None else derive_seed(job_seed, row.index, r),
                 class_id=row.class_id, prompt=row.prompt, user_id=row.id, cfg_scale=cfg_scale,
                 temperature=temperature, top_k=top_k, top_p=top_p, extra=row.extra)
            for r in replicas]


def expand_items(rows: Iterable[ManifestRow], *, job_seed: int,
                 sampling: SamplingParams) -> list[Item]:
    """One item per (row, replica), in row order then replica order (small inputs only: a job's
    plan never does this for the whole manifest; its shards expand their own items)."""
    items: list[Item] = []
    for row in rows:
        items += row_items(row, range(row.count), job_seed=job_seed, sampling=sampling)
    return items


@dataclass(frozen=True)
class Shard:
    """A descriptor of `size` consecutive items of the plan: from replica `first_replica` of
    `rows[0]` on, through the rows it touches. It holds rows, not items; `items` expands them
    where the shard is generated (in the worker), once per shard object, and is never pickled."""
    index: int
    shard_id: str         # "shard-00000"
    start: int            # the plan offset of its first item
    size: int
    rows: tuple[ManifestRow, ...]
    first_replica: int
    job_seed: int
    sampling: SamplingParams

    @cached_property
    def items(self) -> tuple[Item, ...]:
        out: list[Item] = []
        replica, left = self.first_replica, self.size
        for row in self.rows:
            take = min(left, row.count - replica)
            out += row_items(row, range(replica, replica + take), job_seed=self.job_seed, sampling=self.sampling)
            left -= take
            replica = 0
        return tuple(out)

    def __len__(self) -> int:
        return self.size

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("items", None)  # ship the descriptor, not its expansion
        return state


class Plan(Sequence[Shard]):
    """Every shard of a job, as a function of the manifest rows, the job seed, the sampling
    defaults and the shard size: consecutive cuts of `shard_size` items in row then replica
    order (only the last shard may be smaller). Memory and time grow with the rows, not with
    the images: shard i is built on demand from a running total of the rows' counts."""

    def __init__(self, rows: Sequence[ManifestRow], *, job_seed: int, sampling: SamplingParams,
                 shard_size: int):
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
        self.rows = list(rows)
        self.job_seed, self.sampling, self.shard_size = job_seed, sampling, shard_size
        self.starts = list(accumulate((row.count for row in self.rows), initial=0))  # row i starts at starts[i]
        self.items = self.starts[-1]

    def __len__(self) -> int:
        return -(-self.items // self.shard_size)

    def size_of(self, index: int) -> int:
        """How many items shard `index` holds (0 outside the plan)."""
        return max(0, min(self.shard_size, self.items - index * self.shard_size))

    def __getitem__(self, index):  # noqa: ANN001 - int or slice, as for any Sequence
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"shard {index} is outside the plan ({n} shards)")
        start = index * self.shard_size
        stop = min(start + self.shard_size, self.items)
        first = bisect_right(self.starts, start) - 1
        last = bisect_right(self.starts, stop - 1) - 1
        return Shard(index=index, shard_id=shard_id(index), start=start, size=stop - start,
                     rows=tuple(self.rows[first:last + 1]), first_replica=start - self.starts[first],
                     job_seed=self.job_seed, sampling=self.sampling)

    def __iter__(self) -> Iterator[Shard]:
        return (self[i] for i in range(len(self)))

    def fingerprint(self) -> str:
        """A 16-hex-digit digest of the whole plan, computed from the rows (one pass, no items).

        A resumed job compares it with the one recorded at submission; if the manifest, the job
        seed, the sampling defaults, the seed derivation or the shard size changed, committed
        shards no longer mean what they meant, so resuming must refuse. Every item is a pure
        function of what goes in here: its row (a field left out means the job's default, which
        is hashed too), its replica, the job seed.
        """
        h = hashlib.blake2b(digest_size=8, person=_FINGERPRINT_DOMAIN_V2)
        s = self.sampling
        h.update(repr((_SEED_DOMAIN, self.shard_size, self.items, len(self), self.job_seed,
                       (s.cfg_scale, s.temperature, s.top_k, s.top_p))).encode())
        # repr gives one exact text per value (floats round-trip, strings are quoted), so a prompt
        # containing separators cannot collide with another field layout; a chunk at a time, as
        # one repr of a list is far cheaper than one per row. The order is part of every recorded
        # fingerprint: it is not the manifest's field list, and never changes.
        fields = attrgetter("index", "count", "seed", "class_id", "prompt", "id", "cfg_scale", "temperature",
                            "top_k", "top_p")
        for start in range(0, len(self.rows), _FINGERPRINT_CHUNK):
            h.update(repr(list(map(fields, self.rows[start:start + _FINGERPRINT_CHUNK]))).encode())
        return h.hexdigest()

    def doc(self) -> dict:
        """What plan.json records (jobs.layout.plan_key)."""
        return {"fingerprint": self.fingerprint(), "fingerprint_version": FINGERPRINT_VERSION,
                "items": self.items, "shards": len(self)}

    def matches(self, recorded: dict) -> bool:
        """Whether plan.json's `recorded` document describes this plan (either fingerprint version)."""
        if recorded.get("fingerprint_version", 1) == FINGERPRINT_VERSION:
            return recorded.get("fingerprint") == self.fingerprint()
        # plan.json written before fingerprints were computed from rows: the v1 digest streams
        # over every item, which is fine for the jobs of that time (they held every item in memory).
        return recorded.get("items") == self.items and recorded.get("fingerprint") == legacy_fingerprint(self)


def legacy_fingerprint(shards: Iterable[Shard]) -> str:
    """The v1 digest (plan.json before fingerprint_version 2): shard boundaries and every item's
    fields, one item at a time."""
    h = hashlib.blake2b(digest_size=8, person=_FINGERPRINT_DOMAIN)
    for shard in shards:
        h.update(f"{shard.index}|{shard.shard_id}|{len(shard.items)}\n".encode())
        for it in shard.items:
            fields = [it.item_id, it.row, it.replica, it.seed, it.class_id, it.prompt,
                      it.user_id, it.cfg_scale, it.temperature, it.top_k, it.top_p]
            # surrogatepass: valid text hashes as before; a lone surrogate (refused by the manifest
            # rules, but an Item can be built by hand) must not crash the digest.
            h.update(json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            h.update(b"\n")
    return h.hexdigest()
