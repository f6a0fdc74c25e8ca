"""P places x K views: the GSV-Cities batches of MixVPR, BoQ and SALAD, from a
place-recognition split (database + queries with UTM positions).

GSV-Cities labels every image with its place; the place-recognition splits
jaxset reads (embedded synthetic_places, Pittsburgh, Tokyo, VPR folders)
label positions instead. `place_groups` turns positions into places: the
database images taken at one position (a panorama's cutouts, to the
centimetre) form a place, and each query joins the place nearest it when that
lies within `query_radius` (10 m, NetVLAD's non-trivial positives), bringing
the query's other time of day and viewpoint. `place_pk_batches` then draws P
places and K views of each per step, as samplers.pk.pk_batches draws identities.
"""
from __future__ import annotations

import grain
import numpy as np

from jaxset.data.images import load_images
from jaxset.data.records import read_metadata
from jaxset.data.sampling import (
  _PICK,
  _Epochs,
  _resolve_shard,
  _rng,
  _to_dataset,
)
from jaxset.data.transforms import ImageFn

__all__ = ["place_groups", "place_pk_batches"]


def place_groups(database_utm, query_utm=None, *, query_radius: float = 10.0,
                 decimals: int = 2):
  """Places from positions.

  Args:
    database_utm: [N, 2] metres; images at the same position (rounded to
      `decimals`) form one place.
    query_utm: optional [Q, 2] metres; each query joins the nearest place if it
      is within query_radius (inclusive), else no place (-1).

  Returns:
    (db_place [N] int64, query_place [Q] int64 (-1: none), place_utm [P, 2]);
    places are numbered in order of their first database image.
  """
  from scipy.spatial import cKDTree
  db = np.asarray(database_utm, np.float64).reshape(-1, 2)
  if len(db) == 0:
    raise ValueError("place_groups needs database images; the database split is empty.")
  keys = np.round(db, decimals)
  _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
  order = np.argsort(first, kind="stable")  # places numbered by first appearance
  rank = np.empty_like(order)
  rank[order] = np.arange(len(order))
  db_place = rank[inverse.reshape(-1)].astype(np.int64)
  place_utm = db[np.sort(first)]
  if query_utm is None:
    return db_place, np.zeros(0, np.int64), place_utm
  q = np.asarray(query_utm, np.float64).reshape(-1, 2)
  dist, nearest = cKDTree(place_utm).query(q) if len(q) else (np.zeros(0), np.zeros(0, int))
  query_place = np.where(dist <= query_radius, nearest, -1).astype(np.int64)
  return db_place, query_place, place_utm


class _PlacePKMaker:

  def __init__(self, database, queries, p, k, seed, image_fn, shard, query_radius,
               min_views):
    self.database, self.queries, self.p, self.k = database, queries, p, k
    self.seed, self.image_fn = seed, image_fn
    db_utm = read_metadata(database, ["utm"])["utm"]
    q_utm = read_metadata(queries, ["utm"])["utm"] if queries is not None else None
    db_place, q_place, self.place_utm = place_groups(db_utm, q_utm, query_radius=query_radius)
    self.num_db = len(db_place)
    # One id space for both sources: database i -> i, query j -> num_db + j.
    views = np.concatenate([db_place, q_place])
    idx = np.flatnonzero(views >= 0)
    idx = idx[np.argsort(views[idx], kind="stable")]
    cuts = np.flatnonzero(np.diff(views[idx])) + 1
    self.members = {int(views[g[0]]): g for g in np.split(idx, cuts)}
    self.places = np.array(sorted(pl for pl, m in self.members.items() if len(m) >= min_views),
                           np.int64)
    self.epochs = _Epochs(
        self.places, p, seed, shard, "p (places per batch)",
        f"p={p} places per batch but only {len(self.places)} places have >= min_views="
        f"{min_views} views; lower p or min_views, or raise query_radius.")
    self.local = self.epochs.local

  def __call__(self, step: int) -> dict:
    rows, labels = [], []
    for j, place in enumerate(self.epochs.batch(step), self.local.start):
      members = self.members[int(place)]
      rng = _rng(self.seed, _PICK, step, j)
      rows.append(rng.choice(members, self.k, replace=len(members) < self.k))
      labels.append(np.full(self.k, place))
    views, labels = np.concatenate(rows).astype(np.int64), np.concatenate(labels)
    positions = [(j * self.k + t,) for j in range(self.local.start, self.local.stop)
                 for t in range(self.k)]
    is_query = views >= self.num_db
    image = None
    for flag, source, offset in ((False, self.database, 0), (True, self.queries, self.num_db)):
      sel = np.flatnonzero(is_query == flag)
      if len(sel) == 0:
        continue
      part = load_images(source, views[sel] - offset, self.image_fn, self.seed, step,
                          [positions[i] for i in sel])
      if image is None:
        image = np.zeros((len(views),) + part.shape[1:], np.uint8)
      image[sel] = part
    return {"image": image, "label": labels.astype(np.int32),
            "utm": self.place_utm[labels].astype(np.float32), "is_query": is_query,
            "index": np.where(is_query, views - self.num_db, views)}


def place_pk_batches(database, queries=None, *, p: int, k: int, seed: int = 0,
                     query_radius: float = 10.0, min_views: int = 2,
                     image_fn: ImageFn | None = None, shard=None,
                     num_steps: int | None = None, num_threads: int = 2, prefetch: int = 4,
                     worker_count: int = 0) -> grain.IterDataset:
  """P places x K views per batch (GSV-Cities style), rows place-major.

  Places come from place_groups(database utm, queries utm, query_radius); only
  places with >= min_views views (database images + joined queries) are drawn.
  Each epoch permutes them and cuts groups of P (the remainder waits for the
  next epoch); each place gives K views, without replacement when it has >= K,
  else with replacement (an image may then repeat, augmented differently).

  Returns batches (row = j * K + t, P_local = P / process_count):
    image uint8 [P_local*K, H, W, 3]; label int32 (place id); utm float32
    [P_local*K, 2] (the place's position, e.g. to keep places closer than a
    radius out of each other's negatives); is_query bool; index int64 (into
    `queries` where is_query, else into `database`).
  Args:
    database, queries: data sources with "image" and "utm" float [2] metres
      (queries may be None: database images only).
    seed: everything random derives from (seed, step[, row]).
    image_fn: `fn(image, rng) -> image` (augmentation, resizing) or None.
    shard: (process_index, process_count); default sampling.process_shard().
    num_steps: None = infinite; else the number of batches.
    num_threads / prefetch / worker_count: as every sampler (jaxset/data/sampling.py).
  """
  if p < 2 or k < 2:
    raise ValueError(f"place_pk_batches needs p >= 2 places and k >= 2 views (positives "
                     f"and negatives in every batch); got p={p}, k={k}.")
  maker = _PlacePKMaker(database, queries, p, k, seed, image_fn, _resolve_shard(shard),
                        query_radius, min_views)
  return _to_dataset(maker, num_steps, num_threads=num_threads, prefetch=prefetch,
                     worker_count=worker_count)
