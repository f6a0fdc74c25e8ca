"""What every sampler (jaxset/data/samplers/) shares.

Process shards, seeded generators with independent streams, per-epoch
permutations, the grain dataset a batch maker becomes, grouping of records by
key, and the orbax args that checkpoint a grain iterator.

Every sampler returns a `grain.IterDataset` of batches (dicts of numpy with
leading batch dims); `iter(ds)` gives a `grain.DatasetIterator` with
`get_state()` / `set_state()` that orbax checkpoints through `save_args` /
`restore_args`. How a batch is made:

  grain.MapDataset.range(num_steps)          # one element per global step
    .map(BatchMaker)                         # step -> plan (indices) -> records
    .to_iter_dataset(ReadOptions(threads))   # background-thread prefetch
    [.mp_prefetch(workers)]                  # optional worker processes

Determinism: the plan of a step depends only on (seed, step). Training
samplers are infinite (num_steps=None) and reshuffle once per epoch (a
permutation of identities / tracklets / queries seeded by (seed, epoch));
evaluation iterators are finite. Per-image randomness (augmentation) uses one
`np.random.Generator` per (seed, step, global row, slot), so a global batch is
bit-identical whatever the process count, thread count or prefetch depth.
Samplers read only the image feature of tfds records, and keep a split's
decoded images in memory when they fit in images.IMAGE_CACHE_BYTES (the
embedded datasets do): the same pixels, without the decode from the second
epoch on.

Multi-host: each sampler takes `shard=(process_index, process_count)`
(default: `process_shard()`, i.e. jax.process_index()/process_count()). Every
process builds the same global plan and loads only its contiguous slice of
rows, 1/process_count of the global batch (PK slices whole identities). The
training loop then assembles global arrays with
`jax.make_array_from_process_local_data(sharding, local_batch)`.
"""
from __future__ import annotations

import sys
from typing import Any, Mapping

import grain
import numpy as np

# Streams keep the seeded generators of different uses independent.
_PERM, _PICK, _IMAGE, _SET, _PAIR, _NEG = range(1, 7)


def process_shard() -> tuple[int, int]:
  """(jax.process_index(), jax.process_count())."""
  import jax
  return jax.process_index(), jax.process_count()


def _resolve_shard(shard) -> tuple[int, int]:
  index, count = process_shard() if shard is None else (int(shard[0]), int(shard[1]))
  if count < 1 or not 0 <= index < count:
    raise ValueError(
        f"shard must be (index, count) with 0 <= index < count; got {shard}.")
  return index, count


def _shard_slice(global_size: int, shard: tuple[int, int], what: str) -> slice:
  index, count = shard
  if global_size % count:
    raise ValueError(
        f"{what}={global_size} must be divisible by the process count {count} "
        "so that every process gets the same share; change the batch size.")
  per = global_size // count
  return slice(index * per, (index + 1) * per)


def _rng(seed: int, *path: int) -> np.random.Generator:
  return np.random.default_rng([int(seed) % 2**63, *(int(p) for p in path)])


class _Epochs:
  """Items drawn epoch by epoch: each epoch permutes `items` (seeded by
  (seed, epoch)) and cuts the permutation into batches of `size`, the
  remainder waiting for the next epoch; this process makes rows `local` of
  each batch. `what` names `size` in the errors; `too_few` is the error when
  there are fewer items than `size`, in the sampler's terms."""

  def __init__(self, items: np.ndarray, size: int, seed: int, shard: tuple[int, int],
               what: str, too_few: str | None = None):
    if len(items) < size:
      raise ValueError(too_few or f"{what}={size} but only {len(items)} items to draw.")
    self.items, self.size, self.seed = items, size, seed
    self.steps_per_epoch = len(items) // size
    self.local = _shard_slice(size, shard, what)
    self._perms = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      perm = _rng(self.seed, _PERM, epoch).permutation(self.items)
      if len(self._perms) > 2:
        self._perms.clear()
      self._perms[epoch] = perm
    return perm

  def batch(self, step: int) -> np.ndarray:
    """This process's items of batch `step`: its global rows local.start, ..."""
    epoch, within = divmod(int(step), self.steps_per_epoch)
    return self._permutation(epoch)[within * self.size:(within + 1) * self.size][self.local]


def _ensure_absl_flags_parsed():
  # grain's worker processes read absl flags; outside an absl app they are
  # unparsed and grain raises.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _to_dataset(batch_maker, num_steps: int | None, *, num_threads: int,
                prefetch: int, worker_count: int) -> grain.IterDataset:
  if num_steps is not None and num_steps < 0:
    raise ValueError(f"num_steps must be >= 0 or None (infinite); got {num_steps}.")
  n = sys.maxsize if num_steps is None else int(num_steps)
  ds = grain.MapDataset.range(n).map(batch_maker)
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch))
  if worker_count > 0:
    _ensure_absl_flags_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return ds


def _group(keys: np.ndarray, order: np.ndarray | None = None
           ) -> dict[int, np.ndarray]:
  """key -> indices of the records with that key (key >= 0 only), sorted by
  `order` (e.g. frame number), then by index."""
  keys = np.asarray(keys, np.int64)
  idx = np.flatnonzero(keys >= 0)
  if len(idx) == 0:
    return {}
  sub_order = np.zeros(len(idx)) if order is None else np.asarray(order)[idx]
  idx = idx[np.lexsort((idx, sub_order, keys[idx]))]
  cuts = np.flatnonzero(np.diff(keys[idx])) + 1
  return {int(keys[g[0]]): g for g in np.split(idx, cuts)}


def _take_meta(meta: Mapping[str, np.ndarray], idx: np.ndarray) -> dict:
  """Metadata rows `idx`: integers as int32, degradation as float32."""
  out = {}
  for k, col in meta.items():
    v = col[idx]
    if k == "degradation":
      v = v.astype(np.float32)
    elif np.issubdtype(v.dtype, np.integer):
      v = v.astype(np.int32)
    out[k] = v
  return out


_COMMON_ARGS_DOC = """
    seed: everything random derives from (seed, step[, row]).
    image_fn: `fn(image, rng) -> image` (see transforms.py), e.g. augmentation
      and a resize for datasets of varying image sizes; None keeps images.
    shard: (process_index, process_count); default process_shard().
    num_steps: None = infinite (training); else the number of batches.
    num_threads / prefetch: grain background threads and batches buffered.
    worker_count: > 0 adds grain multiprocess prefetch (absl flags are marked
      parsed for it); the image_fn and any miner must then be picklable.
"""


def _with_common_args(fn):
  """Appends the arguments every sampler shares to fn's docstring."""
  fn.__doc__ = fn.__doc__.rstrip() + _COMMON_ARGS_DOC
  return fn


def save_args(iterator) -> Any:
  """orbax args saving a grain iterator's state (one JSON file per process).

  Use inside a Composite next to the train state:

    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=sampling.save_args(it)))
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=sampling.restore_args(it)))   # `it` now continues where saved
  """
  return grain.checkpoint.CheckpointSave(iterator)


def restore_args(iterator) -> Any:
  """orbax args restoring a grain iterator's state in place (see save_args);
  the iterator must come from the same pipeline (same seed and sizes)."""
  return grain.checkpoint.CheckpointRestore(iterator)
