"""A whole split in order, in fixed-shape padded batches (evaluation)."""
from __future__ import annotations

import math
from typing import Sequence

import grain
import numpy as np

from jaxset.data.images import _stack_images
from jaxset.data.records import _column, _is_image, fetch
from jaxset.data.sampling import _resolve_shard, _shard_slice, _to_dataset
from jaxset.data.transforms import ImageFn


class _EvalMaker:

  def __init__(self, source, batch_size, image_fn, shard, keys):
    self.source, self.batch_size, self.image_fn, self.keys = source, batch_size, image_fn, keys
    self.n = len(source)
    self.local = _shard_slice(batch_size, shard, "batch_size")

  def __call__(self, step: int) -> dict:
    glob = np.arange(step * self.batch_size, (step + 1) * self.batch_size)[self.local]
    valid = glob < self.n
    idx = np.where(valid, glob, self.n - 1)
    records = fetch(self.source, idx)
    out = {}
    for key in records[0]:
      if self.keys is not None and key not in self.keys:
        continue
      values = [r[key] for r in records]
      if _is_image(values[0]):
        out[key] = _stack_images(values, self.image_fn, 0, step,
                                 [(int(i),) for i in idx])
        continue
      col = _column(values)
      if col.dtype.kind in "biuf":  # strings stay host-side: read_metadata has them
        out[key] = col
    out["valid"] = valid
    out["index"] = np.where(valid, glob, -1).astype(np.int64)
    return out


def eval_batches(source, *, batch_size: int, image_fn: ImageFn | None = None,
                 keys: Sequence[str] | None = None, shard=None,
                 num_threads: int = 2, prefetch: int = 4) -> grain.IterDataset:
  """A whole split in order, in ceil(N / batch_size) fixed-shape batches.

  The last global batch is padded by repeating the last record; `valid`
  (bool [B]) marks real rows and `index` (int64 [B]) gives the record index
  (-1 for padding), so a jitted eval step sees one shape. Each process gets
  its contiguous batch_size / process_count rows of every global batch and the
  same number of batches. Returns every image key (uint8 [B, H, W, 3], e.g.
  "image" or "image_a"/"image_b" of a pairs split) and numeric column of the
  records (or only `keys`); strings are left out (read_metadata has them).
  An empty split gives no batches.
  Args:
    source: a random-access data source.
    batch_size: the global batch size (divisible by the process count).
    image_fn: `fn(image, rng) -> image`, rng seeded by the record index, so
      deterministic; use transforms.eval_transform((H, W)) to resize.
    keys: the record keys to return (default: images and numeric columns).
    shard: (process_index, process_count); default process_shard().
    num_threads / prefetch: grain background threads and batches buffered."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
  maker = _EvalMaker(source, batch_size, image_fn, _resolve_shard(shard), keys)
  num_steps = math.ceil(len(source) / batch_size)
  return _to_dataset(maker, num_steps, num_threads=num_threads, prefetch=prefetch,
                     worker_count=0)
