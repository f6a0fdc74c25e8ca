"""Balanced verification pairs drawn afresh from an identity split."""
from __future__ import annotations

import grain
import numpy as np

from jaxset.data.images import load_images
from jaxset.data.records import read_metadata
from jaxset.data.sampling import (
  _PAIR,
  _group,
  _resolve_shard,
  _rng,
  _shard_slice,
  _to_dataset,
  _with_common_args,
)
from jaxset.data.transforms import ImageFn


class _PairMaker:

  def __init__(self, source, labels, batch_size, seed, image_fn, shard):
    self.source, self.batch_size, self.seed, self.image_fn = source, batch_size, seed, image_fn
    self.groups = _group(labels)
    self.ids = np.array(sorted(self.groups), np.int64)
    self.multi = np.array([c for c in self.ids if len(self.groups[int(c)]) >= 2], np.int64)
    if len(self.ids) < 2 or len(self.multi) == 0:
      raise ValueError(
          "verification pairs need >= 2 identities and one with >= 2 images; "
          f"the split has {len(self.ids)} identities, {len(self.multi)} with >= 2.")
    self.local = _shard_slice(batch_size, shard, "batch_size")

  def __call__(self, step: int) -> dict:
    a, b = [], []
    for row in range(self.local.start, self.local.stop):
      rng = _rng(self.seed, _PAIR, step, row)
      if row % 2 == 0:  # same identity
        c = int(rng.choice(self.multi))
        i, j = rng.choice(self.groups[c], 2, replace=False)
      else:
        c1, c2 = rng.choice(self.ids, 2, replace=False)
        i, j = rng.choice(self.groups[int(c1)]), rng.choice(self.groups[int(c2)])
      a.append(int(i))
      b.append(int(j))
    a, b = np.array(a, np.int64), np.array(b, np.int64)
    rows = list(range(self.local.start, self.local.stop))
    return {
        "image_a": load_images(self.source, a, self.image_fn, self.seed, step,
                                [(r, 0) for r in rows]),
        "image_b": load_images(self.source, b, self.image_fn, self.seed, step,
                                [(r, 1) for r in rows]),
        "same": np.array([r % 2 == 0 for r in rows]),
        "index_a": a, "index_b": b,
    }


@_with_common_args
def pair_batches(source, *, batch_size: int, seed: int = 0,
                 image_fn: ImageFn | None = None, shard=None,
                 num_steps: int | None = None, num_threads: int = 2,
                 prefetch: int = 4, worker_count: int = 0) -> grain.IterDataset:
  """Balanced verification pairs drawn from an identity split (BCE / checks).

  Even global rows are same-identity pairs (two distinct images of an
  identity with >= 2), odd rows different-identity pairs; every step draws
  afresh from (seed, step, row). Balanced per process when
  batch_size / process_count is even. For a fixed protocol of pairs (LFW's
  "pairs" split) iterate it with `eval_batches` instead.

  Returns: image_a, image_b uint8 [B, H, W, 3], same bool [B],
    index_a, index_b int64 [B].
  Args:"""
  if batch_size < 2 or batch_size % 2:
    raise ValueError(f"batch_size must be even and >= 2; got {batch_size}.")
  labels = read_metadata(source, ["label"])["label"].astype(np.int64)
  maker = _PairMaker(source, labels, batch_size, seed, image_fn, _resolve_shard(shard))
  return _to_dataset(maker, num_steps, num_threads=num_threads, prefetch=prefetch,
                     worker_count=worker_count)
