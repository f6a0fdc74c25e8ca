"""P identities x K images per batch, and the balanced in-batch pairs of such a batch."""
from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from jaxset.data.images import load_images
from jaxset.data.records import read_metadata
from jaxset.data.sampling import (
  _PICK,
  _Epochs,
  _group,
  _resolve_shard,
  _rng,
  _take_meta,
  _to_dataset,
  _with_common_args,
)
from jaxset.data.transforms import ImageFn


class _PKMaker:

  def __init__(self, source, labels, meta, p, k, seed, image_fn, shard):
    self.source, self.meta, self.p, self.k = source, meta, p, k
    self.seed, self.image_fn = seed, image_fn
    self.groups = _group(labels)
    self.ids = np.array(sorted(self.groups), np.int64)
    self.epochs = _Epochs(
        self.ids, p, seed, shard, "p (identities per batch)",
        f"p={p} identities per batch but the split has only {len(self.ids)} "
        "labelled identities; lower p.")
    self.local = self.epochs.local

  def __call__(self, step: int) -> dict:
    rows = []
    for j, identity in enumerate(self.epochs.batch(step), self.local.start):
      members = self.groups[int(identity)]
      rng = _rng(self.seed, _PICK, step, j)
      rows.append(rng.choice(members, self.k, replace=len(members) < self.k))
    idx = np.concatenate(rows).astype(np.int64)
    positions = [j * self.k + t for j in range(self.local.start, self.local.stop)
                 for t in range(self.k)]
    batch = _take_meta(self.meta, idx)
    batch["label"] = batch["label"].astype(np.int32)
    batch["image"] = load_images(self.source, idx, self.image_fn, self.seed, step,
                                  [(r,) for r in positions])
    batch["index"] = idx
    return batch


@_with_common_args
def pk_batches(source, *, p: int, k: int, seed: int = 0,
               image_fn: ImageFn | None = None, shard=None,
               num_steps: int | None = None,
               meta_keys: Sequence[str] = ("label", "camera", "tracklet", "degradation"),
               num_threads: int = 2, prefetch: int = 4, worker_count: int = 0
               ) -> grain.IterDataset:
  """P identities x K images per batch (softmax / margin heads, CASN).

  Each epoch permutes the labelled identities (label >= 0) and cuts them
  into groups of P (the remainder waits for the next epoch); each identity
  gives K images, without replacement when it has >= K, else with
  replacement (duplicates are then possible).

  Returns batches, rows identity-major (row = j * K + t):
    image uint8 [P_local*K, H, W, 3], label int32 [P_local*K], index int64
    (record index), and the meta_keys columns the split has (camera,
    tracklet int32; degradation float32, -1 unknown).
  P_local = P / process_count: every process gets whole identities, so P must
  divide by the process count. For in-batch pairs (CASN) use `pk_pairs(P, K)`.
  Args:"""
  if p < 1 or k < 1:
    raise ValueError(f"p and k must be >= 1; got p={p}, k={k}.")
  meta = read_metadata(source)
  if "label" not in meta:
    raise ValueError("pk_batches needs a 'label' column in the records.")
  labels = meta["label"].astype(np.int64)
  meta = {key: meta[key] for key in meta_keys if key in meta}
  maker = _PKMaker(source, labels, meta, p, k, seed, image_fn, _resolve_shard(shard))
  return _to_dataset(maker, num_steps, num_threads=num_threads, prefetch=prefetch,
                     worker_count=worker_count)


def pk_pairs(p: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Balanced in-batch pairs of a PK batch (row = j * K + t), static shapes.

  Positives: every unordered pair of rows of the same identity,
  P*K*(K-1)/2 of them. Negatives: as many, pairing row (j, t) of each positive
  (j, t, u) with row (j+1 mod P, u). Returns (a, b, same): int32 row indices
  and bool [2 * P*K*(K-1)/2], positives first; use inside the jitted step as
  emb[a], emb[b]. Needs K >= 2 (else no positives) and P >= 2.
  """
  if p < 2 or k < 2:
    raise ValueError(f"pk_pairs needs p >= 2 and k >= 2; got p={p}, k={k}.")
  t, u = np.triu_indices(k, 1)
  j = np.repeat(np.arange(p), len(t))
  t, u = np.tile(t, p), np.tile(u, p)
  pos_a, pos_b = j * k + t, j * k + u
  neg_b = ((j + 1) % p) * k + u
  a = np.concatenate([pos_a, pos_a]).astype(np.int32)
  b = np.concatenate([pos_b, neg_b]).astype(np.int32)
  same = np.concatenate([np.ones(len(pos_a), bool), np.zeros(len(pos_a), bool)])
  return a, b, same
