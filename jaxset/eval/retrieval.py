"""Place recognition: nearest neighbours on device and Recall@N.

Protocol (NetVLAD, Pittsburgh 30k/250k, Tokyo 24/7): a query is a hit at N if
any of its N nearest database images (Euclidean distance on the global
descriptors) lies within `pos_radius` metres of the query (UTM Euclidean, the
dbStruct's posDistThr = 25). Recall@N divides by ALL queries: a query with no
database image inside the radius can never be a hit and counts as a miss.

The nearest-neighbour search is jaxset.eval.search.top_k_search: the database
sharded over every device, queries in chunks and database rows in blocks, so
the full Q x DB distance matrix never exists at once: the working memory is
about chunk_size x db_chunk_size floats per device.
"""
from __future__ import annotations

import functools
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxset.eval import search
from jaxset.ops import _checks

DEFAULT_NS = (1, 5, 10, 20)


@functools.partial(jax.jit, static_argnames=("metric",))
def pairwise_sq_distances(x, y, metric: str = "euclidean"):
  """Squared Euclidean (or cosine) distances between rows, [M, D] x [N, D] -> [M, N].

  euclidean: ||x||^2 + ||y||^2 - 2 x.y, clipped at 0 (the expanded form can go
  slightly negative in floating point). cosine: 1 - x_hat . y_hat with zero rows
  left at zero (their distance to everything is 1). The matmul runs at HIGHEST
  precision so GPUs do not silently drop to TF32 and reorder near ties.
  """
  hi = jax.lax.Precision.HIGHEST
  if metric == "cosine":
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    y = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    return 1.0 - jnp.matmul(x, y.T, precision=hi)
  xx = jnp.sum(x * x, axis=-1)[:, None]
  yy = jnp.sum(y * y, axis=-1)[None, :]
  d = xx + yy - 2.0 * jnp.matmul(x, y.T, precision=hi)
  return jnp.maximum(d, 0.0)


def _check_features(query_features, db_features):
  q = np.asarray(query_features)
  db = np.asarray(db_features)
  if q.ndim != 2 or db.ndim != 2:
    raise ValueError(
        "query_features and db_features must be [num, dim] arrays; got shapes "
        f"{q.shape} and {db.shape}. Flatten each descriptor to one row.")
  _checks.check_same(("query_features dim", "db_features dim"),
                     (q.shape[1], db.shape[1]), "Descriptor sizes")
  if db.shape[0] == 0:
    raise ValueError("db_features is empty: the database needs at least one row.")
  _checks.check_finite("query_features", q)
  _checks.check_finite("db_features", db)
  dtype = np.promote_types(np.result_type(q.dtype, db.dtype), np.float32)
  if dtype == np.float64 and not jax.config.jax_enable_x64:
    dtype = np.float32
  return q.astype(dtype), db.astype(dtype)


def _faiss_search(q: np.ndarray, db: np.ndarray, k: int):
  import faiss  # pylint: disable=import-outside-toplevel
  index = faiss.IndexFlatL2(db.shape[1])
  index.add(np.ascontiguousarray(db, np.float32))
  d, idx = index.search(np.ascontiguousarray(q, np.float32), k)
  return np.maximum(d, 0.0), idx.astype(np.int64)


def nearest_neighbors(query_features, db_features, k: int, *,
                      chunk_size: int = 256, db_chunk_size: int | None = None,
                      use_faiss: bool = False):
  """The k nearest database rows of every query by Euclidean distance.

  Args:
    query_features: [Q, D] descriptors.
    db_features: [N, D] descriptors.
    k: neighbours per query; capped at N.
    chunk_size: queries per device step (the last chunk is zero-padded to this
      size so one compiled program serves every chunk).
    db_chunk_size: database rows per scan step on each device; None takes
      search.top_k_search's default. Per-block top-k lists are merged exactly,
      so the answer does not depend on it (search.top_k_search).
    use_faiss: search with faiss.IndexFlatL2 on the host instead. If faiss is not
      installed a warning says so and the JAX search runs instead.

  Returns:
    (distances, indices): float32 [Q, k'] Euclidean (not squared) distances in
    ascending order and int64 [Q, k'] database indices, k' = min(k, N). Exact
    ties keep the lower database index first. Q = 0 gives empty [0, k'] arrays.
  """
  q, db = _check_features(query_features, db_features)
  if k < 1:
    raise ValueError(f"k must be >= 1; got {k}.")
  if chunk_size < 1 or (db_chunk_size is not None and db_chunk_size < 1):
    raise ValueError(
        f"chunk_size and db_chunk_size must be >= 1; got {chunk_size}, {db_chunk_size}.")
  num_q, num_db = q.shape[0], db.shape[0]
  k = min(int(k), num_db)
  if num_q == 0:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
  if use_faiss:
    try:
      d, idx = _faiss_search(q, db, k)
      return np.sqrt(d).astype(np.float32), idx
    except ImportError:
      warnings.warn(
          "use_faiss=True but faiss is not installed (pip install faiss-cpu or "
          "faiss-gpu); falling back to the exact chunked JAX search, which gives "
          "the same neighbours.", RuntimeWarning, stacklevel=2)

  blocks = {} if db_chunk_size is None else {"db_block": db_chunk_size}
  d, idx = search.top_k_search(q, db, k, metric="l2", query_block=chunk_size, **blocks)
  return np.sqrt(np.maximum(d, 0.0)).astype(np.float32), idx


def _dedup_by_panorama(indices: np.ndarray, distances: np.ndarray,
                       panorama_ids: np.ndarray, k: int):
  """Keeps each panorama's first (best ranked) image; pads with -1 / inf."""
  out_i = np.full((indices.shape[0], k), -1, np.int64)
  out_d = np.full((indices.shape[0], k), np.inf, np.float32)
  for r in range(indices.shape[0]):
    _, first = np.unique(panorama_ids[indices[r]], return_index=True)
    keep = np.sort(first)[:k]
    out_i[r, :keep.size] = indices[r, keep]
    out_d[r, :keep.size] = distances[r, keep]
  return out_i, out_d


def recall_at_n(query_features, db_features, query_utm, db_utm,
                ns: Sequence[int] = DEFAULT_NS, pos_radius: float = 25.0, *,
                chunk_size: int = 256, db_chunk_size: int | None = None,
                use_faiss: bool = False, db_panorama_ids=None,
                return_neighbors: bool = False):
  """Recall@N of place recognition (NetVLAD / Pittsburgh / Tokyo 24/7 protocol).

  A query is a hit at N if any of its N nearest database images (L2 on the
  features) lies within `pos_radius` metres (UTM Euclidean, distance <= radius,
  as a radius search counts it). Recall@N = hits / Q over ALL queries, so queries
  with no database image within the radius count as misses.

  Tokyo 24/7: each panorama is stored as 12 cutouts. With `db_panorama_ids` the
  ranked list is de-duplicated per panorama (a panorama's best-ranked cutout
  represents it, later cutouts of the same panorama are skipped) before taking
  the top N, so N counts distinct panoramas. The search retrieves
  (max(ns) - 1) * (largest panorama size) + 1 neighbours, enough to always find
  max(ns) distinct panoramas.

  Args:
    query_features: [Q, D]; db_features: [N, D].
    query_utm: [Q, 2] (easting, northing) in metres; db_utm: [N, 2]. The .mat
      files store 2 x N: transpose them.
    ns: the N values, each >= 1; values above the database size (or the number
      of panoramas) behave like the database size.
    pos_radius: metres (posDistThr).
    chunk_size, db_chunk_size, use_faiss: see `nearest_neighbors`.
    db_panorama_ids: optional [N] ints, the panorama of each database image.
    return_neighbors: also return the retrieved lists.

  Returns:
    {n: recall} with recalls as floats in [0, 1]; with return_neighbors,
    (recalls, indices [Q, max(ns)] int64, distances [Q, max(ns)] float32 feature
    distances) where the lists are de-duplicated per panorama when
    db_panorama_ids is given, padded with -1 / inf if fewer remain. Q = 0 raises.
  """
  ns = tuple(int(n) for n in ns)
  if not ns or min(ns) < 1:
    raise ValueError(f"ns must be a non-empty list of integers >= 1; got {ns}.")
  q_utm = np.asarray(query_utm, np.float64)
  d_utm = np.asarray(db_utm, np.float64)
  num_q = np.shape(query_features)[0]
  num_db = np.shape(db_features)[0]
  _checks.check_shape("query_utm", q_utm, (num_q, 2),
                      "one (easting, northing) row per query; transpose a 2 x Q .mat field")
  _checks.check_shape(
      "db_utm", d_utm, (num_db, 2),
      "one (easting, northing) row per database image; transpose a 2 x N .mat field")
  if num_q == 0:
    raise ValueError("query_features is empty: Recall@N needs at least one query.")
  max_n = max(ns)
  pano = None
  k_search = max_n
  if db_panorama_ids is not None:
    pano = np.asarray(db_panorama_ids)
    _checks.check_shape("db_panorama_ids", pano, (num_db,), "one panorama id per database image")
    largest = int(np.unique(pano, return_counts=True)[1].max())
    k_search = (max_n - 1) * largest + 1
  dist, idx = nearest_neighbors(query_features, db_features, k_search,
                                chunk_size=chunk_size, db_chunk_size=db_chunk_size,
                                use_faiss=use_faiss)
  if pano is not None:
    idx, dist = _dedup_by_panorama(idx, dist, pano, max_n)
  valid = idx >= 0
  geo = np.linalg.norm(d_utm[np.where(valid, idx, 0)] - q_utm[:, None, :], axis=-1)
  close = valid & (geo <= pos_radius)
  # first_hit[q] = rank (0-based) of the first retrieved image within the radius.
  first_hit = np.where(close.any(axis=1), np.argmax(close, axis=1), np.iinfo(np.int64).max)
  recalls = {n: float(np.mean(first_hit < n)) for n in ns}
  if return_neighbors:
    pad = max_n - idx.shape[1]
    if pad > 0:  # database smaller than max(ns)
      idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
      dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
    return recalls, idx[:, :max_n], dist[:, :max_n]
  return recalls
