"""NetVLAD training tuples: a query, its potential positives and its (mined) negatives."""
from __future__ import annotations

from typing import Callable

import grain
import numpy as np

from jaxset.data.images import load_images, padded_images
from jaxset.data.records import neighbours_within, read_metadata
from jaxset.data.sampling import (
  _NEG,
  _PICK,
  _Epochs,
  _resolve_shard,
  _rng,
  _to_dataset,
  _with_common_args,
)
from jaxset.data.transforms import ImageFn

# (query index, candidate database indices) -> the chosen database indices:
# netvlad_tuples' negative_miner and positive_miner.
Miner = Callable[[int, np.ndarray], np.ndarray]


class _TupleMaker:

  def __init__(self, database, queries, batch_size, num_positives, num_negatives,
               pos_radius, neg_radius, negative_pool, negative_miner, seed,
               image_fn, shard, positive_miner=None):
    self.database, self.queries = database, queries
    self.batch_size, self.num_positives = batch_size, num_positives
    self.num_negatives, self.negative_pool = num_negatives, negative_pool
    self.negative_miner, self.seed, self.image_fn = negative_miner, seed, image_fn
    self.positive_miner = positive_miner
    db_utm = read_metadata(database, ["utm"])["utm"]
    q_utm = read_metadata(queries, ["utm"])["utm"]
    self.num_db = len(db_utm)
    self.positives = neighbours_within(q_utm, db_utm, pos_radius)
    self.near = neighbours_within(q_utm, db_utm, neg_radius)
    self.train_queries = np.array(
        [i for i, p in enumerate(self.positives) if len(p)], np.int64)
    self.epochs = _Epochs(
        self.train_queries, batch_size, seed, shard, "batch_size",
        f"batch_size={batch_size} but only {len(self.train_queries)} queries have "
        f"a database image within pos_radius={pos_radius} m; check the utm "
        "columns (metres) or lower batch_size.")
    self.local = self.epochs.local

  def negatives(self, q: int, rng) -> np.ndarray:
    forbidden = self.near[q]
    allowed = self.num_db - len(forbidden)
    pool = min(self.negative_pool, allowed)
    if pool <= 0:
      return np.zeros(0, np.int64)
    draw = rng.choice(self.num_db, min(self.num_db, pool + len(forbidden)),
                      replace=False)
    candidates = draw[~np.isin(draw, forbidden)][:pool].astype(np.int64)
    if self.negative_miner is None:
      return candidates[:self.num_negatives]
    chosen = np.asarray(self.negative_miner(q, candidates), np.int64).reshape(-1)
    if len(chosen) > self.num_negatives:
      raise ValueError(
          f"negative_miner returned {len(chosen)} indices for query {q}; at most "
          f"num_negatives={self.num_negatives} are allowed.")
    bad = (chosen < 0) | (chosen >= self.num_db) | np.isin(chosen, forbidden)
    if bad.any():
      raise ValueError(
          f"negative_miner returned database indices {chosen[bad].tolist()} for "
          f"query {q} that are out of range or within neg_radius; return indices "
          "from candidate_indices (or earlier negatives of this query).")
    return chosen

  def __call__(self, step: int) -> dict:
    qs = self.epochs.batch(step)
    b, P, M = len(qs), self.num_positives, self.num_negatives
    pos = np.full((b, P), -1, np.int64)
    neg = np.full((b, M), -1, np.int64)
    for i, q in enumerate(qs):
      row = self.local.start + i
      cands = self.positives[int(q)]
      pos_rng = _rng(self.seed, _PICK, step, row)
      if self.positive_miner is not None:
        chosen = np.asarray(self.positive_miner(int(q), cands), np.int64).reshape(-1)
        if len(chosen) == 0 or len(chosen) > P or not np.isin(chosen, cands).all():
          raise ValueError(
              f"positive_miner returned {chosen.tolist()} for query {int(q)}; it must "
              f"return 1 to num_positives={P} of the potential positives {cands.tolist()}.")
      elif len(cands) <= P:
        chosen = cands
      else:
        chosen = np.sort(pos_rng.choice(cands, P, replace=False))
      pos[i, :len(chosen)] = chosen
      n = self.negatives(int(q), _rng(self.seed, _NEG, step, row))
      neg[i, :len(n)] = n
    pos_mask, neg_mask = pos >= 0, neg >= 0
    rows = [self.local.start + i for i in range(b)]
    query = load_images(self.queries, qs, self.image_fn, self.seed, step,
                         [(0, r) for r in rows])
    return {
        "query": query,
        "positives": padded_images(self.database, pos, pos_mask, self.image_fn,
                                    self.seed, step, 1, self.local.start),
        "pos_mask": pos_mask,
        "negatives": padded_images(self.database, neg, neg_mask, self.image_fn,
                                    self.seed, step, 2, self.local.start, like=query),
        "neg_mask": neg_mask,
        "query_index": qs.astype(np.int64),
        "positive_index": pos,
        "negative_index": neg,
    }


@_with_common_args
def netvlad_tuples(database, queries, *, batch_size: int = 4, num_positives: int = 4,
                   num_negatives: int = 10, seed: int = 0, pos_radius: float = 10.0,
                   neg_radius: float = 25.0, negative_pool: int = 1000,
                   negative_miner: Miner | None = None,
                   positive_miner: Miner | None = None,
                   image_fn: ImageFn | None = None, shard=None,
                   num_steps: int | None = None, num_threads: int = 2,
                   prefetch: int = 4, worker_count: int = 0) -> grain.IterDataset:
  """NetVLAD training tuples (query, potential positives, negatives).

  Potential positives: database images within pos_radius (10 m, the
  non-trivial positives); queries without any are never drawn. Negatives:
  a pool of `negative_pool` random database images farther than neg_radius
  (25 m) is drawn per query, then `negative_miner(query_index,
  candidate_indices) -> database indices` (at most num_negatives, each
  farther than neg_radius: the candidates or the task's cache of earlier hard
  negatives) picks them; default (None) = the first num_negatives random
  candidates. Paper: the 10 hardest of 1000 candidates under the current model
  plus the 10 hardest cached from before. The miner is called from the loader
  threads; the task refreshes it between cache refreshes by swapping its
  feature cache (an atomic reference swap), and batches already prefetched
  (`prefetch` of them) were mined with the previous cache.
  `positive_miner(query_index, potential_positives) -> database indices` (1
  to num_positives of them) picks the positives the same way; default (None)
  = num_positives random potential positives. With the task's cache it keeps
  the ones nearest the query in feature space, so the paper's min over all
  potential positives (eq. (7)) is taken over the likely best ones without
  computing every potential positive each step.

  Returns batches (B = batch_size / process_count):
    query uint8 [B, H, W, 3]; positives [B, P, H, W, 3], pos_mask bool [B, P];
    negatives [B, M, H, W, 3], neg_mask bool [B, M] (masked slots are zeros);
    query_index int64 [B], positive_index / negative_index int64 (-1 padding),
    the indices into `queries` / `database` the task needs for its caches.
  Args:
    database, queries: data sources with "image" and "utm" float [2] metres."""
  if num_positives < 1 or num_negatives < 1:
    raise ValueError(
        f"num_positives and num_negatives must be >= 1; got {num_positives}, "
        f"{num_negatives}.")
  if worker_count > 0 and negative_miner is not None:
    raise ValueError(
        "negative_miner runs in the loader and cannot see the task's updates from "
        "worker processes; use worker_count=0 (thread prefetch) with a miner.")
  maker = _TupleMaker(database, queries, batch_size, num_positives, num_negatives,
                      pos_radius, neg_radius, negative_pool, negative_miner, seed,
                      image_fn, _resolve_shard(shard), positive_miner)
  return _to_dataset(maker, num_steps, num_threads=num_threads, prefetch=prefetch,
                     worker_count=worker_count)
