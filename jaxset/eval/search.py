"""Exact (and approximate) top-k search over a database sharded on a device mesh.

`top_k_search(queries, database, k)` returns, for every query, the k database
rows with the largest inner product (metric="ip") or the smallest squared
Euclidean distance (metric="l2"). It is the one search behind Recall@N
(retrieval.recall_at_n), CMC/mAP (reid.cmc_map) and k-reciprocal re-ranking
(rerank.k_reciprocal_rerank_features).

How it runs (docs/evaluation.md, "Search"):
- The database is padded and split row-wise over every device of a 1-D mesh
  (axis "db"); each device holds N / num_devices rows.
- Queries go to the devices `query_block` at a time (the last block padded, so
  one compiled program serves every block). Inside jax.shard_map each device
  scans its shard `db_block` rows at a time, keeping a running top-k, so the
  largest array a device builds is one [query_block, db_block] score block.
- The per-device lists (k each) are concatenated in device order and merged by
  one more top-k. Shards hold consecutive rows and lax.top_k keeps the lower
  index first among equal values, so the merge is exact, tie order included:
  equal scores are ranked by ascending database index, as a stable sort of the
  whole row would.

Device memory: the shard (N / num_devices x D descriptors + N / num_devices
norms) plus query_block x (D + db_block + 4k) floats of working space,
whatever N is.

Scores: "ip": q . x; "l2": ||q||^2 + ||x||^2 - 2 q . x clipped at 0 (the
expanded form, so one matmul serves both). float32 descriptors multiply at
HIGHEST precision (GPUs would otherwise drop to TF32 and reorder near ties);
bfloat16 descriptors multiply in bfloat16 and accumulate in float32.

approx=True replaces each block's exact top-k by jax.lax.approx_max_k with the
given recall_target (default 0.95: the expected fraction of the true top-k
found per block; TPUs use it, CPUs and GPUs compute the exact top-k). The
merge across blocks and devices stays exact. `measured_recall` reports what a
run actually found.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxset.ops import _checks

METRICS = ("ip", "l2")
AXIS = "db"


def _as_descriptors(name: str, x) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must be a [num, dim] array; got shape {x.shape}. "
                     "Flatten each descriptor to one row.")
  if x.dtype == jnp.bfloat16:
    return x
  if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
    raise ValueError(f"{name} must hold real numbers; got dtype {x.dtype}.")
  _checks.check_finite(name, x)
  return x


def search_dtype(queries: np.ndarray, database: np.ndarray):
  """bfloat16 when both sides are bfloat16, else float32 (float64 under x64)."""
  if queries.dtype == jnp.bfloat16 and database.dtype == jnp.bfloat16:
    return jnp.bfloat16
  dt = np.promote_types(np.result_type(queries.dtype, database.dtype), np.float32)
  if dt == np.float64 and not jax.config.jax_enable_x64:
    dt = np.float32
  return dt


def block_scores(q, x, x_sq, metric: str):
  """Scores [B, C] of queries q [B, D] against rows x [C, D]; larger = nearer.

  "ip": q . x. "l2": minus the squared distance ||q||^2 + ||x||^2 - 2 q . x,
  the distance clipped at 0. x_sq [C] holds ||x||^2 (ignored for "ip").
  """
  hi = None if q.dtype == jnp.bfloat16 else jax.lax.Precision.HIGHEST
  acc = jnp.float32 if q.dtype == jnp.bfloat16 else None
  s = jnp.matmul(q, x.T, precision=hi, preferred_element_type=acc)
  if metric == "ip":
    return s
  qf = q.astype(s.dtype)
  q_sq = jnp.sum(qf * qf, axis=-1)
  d = jnp.maximum(q_sq[:, None] + x_sq[None, :] - 2.0 * s, 0.0)
  return d if metric == "l2_far" else -d


def _merge(best_s, best_i, s, i, k):
  """Top-k of [best | new]; best holds lower indices, so ties stay index-ordered."""
  v, pos = jax.lax.top_k(jnp.concatenate([best_s, s], axis=1), k)
  return v, jnp.take_along_axis(jnp.concatenate([best_i, i], axis=1), pos, axis=1)


def _shard_top_k(q, x, x_sq, *, n_total, k, metric, db_block, approx, recall_target):
  """The running top-k of q [B, D] over this device's shard x [n_local, D]."""
  n_local, dim = x.shape
  nb = n_local // db_block
  offset = jax.lax.axis_index(AXIS) * n_local
  kb = min(k, db_block)

  def step(carry, inputs):
    best_s, best_i = carry
    xb, sqb, start = inputs
    s = block_scores(q, xb, sqb, metric)
    idx = start + jnp.arange(db_block, dtype=jnp.int32)
    s = jnp.where((idx < n_total)[None, :], s, -jnp.inf)
    if approx:
      v, j = jax.lax.approx_max_k(s, kb, recall_target=recall_target)
    else:
      v, j = jax.lax.top_k(s, kb)
    return _merge(best_s, best_i, v, idx[j], k), None

  starts = offset + db_block * jnp.arange(nb, dtype=jnp.int32)
  # Built from the device's offset so the carry varies over the mesh axis like
  # the scan's outputs (shard_map's type check), on every jax version.
  zero = offset * 0
  sdt = jnp.float32 if q.dtype == jnp.bfloat16 else jnp.promote_types(q.dtype, jnp.float32)
  init = (jnp.full((q.shape[0], k), -jnp.inf, sdt) + zero.astype(sdt),
          jnp.full((q.shape[0], k), -1, jnp.int32) + zero)
  (best_s, best_i), _ = jax.lax.scan(
      step, init, (x.reshape(nb, db_block, dim), x_sq.reshape(nb, db_block), starts))
  return best_s, best_i


@functools.lru_cache(maxsize=32)
def _compiled_search(mesh: Mesh, n_total: int, k: int, metric: str, db_block: int,
                     approx: bool, recall_target: float):
  body = functools.partial(_shard_top_k, n_total=n_total, k=k, metric=metric,
                           db_block=db_block, approx=approx, recall_target=recall_target)
  sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)),
                          out_specs=(P(None, AXIS), P(None, AXIS)))

  @jax.jit
  def run(q, x, x_sq):
    s, i = sharded(q, x, x_sq)  # [B, num_devices * k], device order = index order
    v, pos = jax.lax.top_k(s, k)
    return v, jnp.take_along_axis(i, pos, axis=1)

  return run


def default_mesh(devices: Sequence | None = None) -> Mesh:
  """A 1-D mesh with axis "db" over `devices` (default: every device)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


class ShardedDatabase:
  """A database placed once on a mesh, row-sharded, for repeated searches.

  database [N, D]; db_block: rows per scan step on each device (capped at
  each device's share). Build it once and pass it to `top_k_search` in place
  of the array to search many query sets without moving the database again.
  """

  def __init__(self, database, *, metric: str = "ip", db_block: int = 65536,
               mesh: Mesh | None = None, dtype=None):
    if metric not in METRICS:
      raise ValueError(f"metric must be one of {METRICS}; got {metric!r}.")
    if db_block < 1:
      raise ValueError(f"db_block must be >= 1; got {db_block}.")
    x = _as_descriptors("database", database)
    if x.shape[0] == 0:
      raise ValueError("database is empty: the search needs at least one row.")
    self.mesh = default_mesh() if mesh is None else mesh
    if self.mesh.axis_names != (AXIS,):
      raise ValueError(f"mesh must be 1-D with axis {AXIS!r} (search.default_mesh); "
                       f"got axes {self.mesh.axis_names}.")
    self.metric = metric
    self.dtype = search_dtype(x, x) if dtype is None else dtype
    self.num, self.dim = x.shape
    ndev = self.mesh.devices.size
    per_dev = -(-self.num // ndev)
    self.db_block = min(int(db_block), per_dev)
    n_local = -(-per_dev // self.db_block) * self.db_block
    pad = n_local * ndev - self.num
    x = np.asarray(x, self.dtype)
    if pad:
      x = np.concatenate([x, np.zeros((pad, self.dim), x.dtype)])
    xf = x.astype(np.float32)
    sq = np.einsum("nd,nd->n", xf, xf) if metric == "l2" else np.zeros(x.shape[0], np.float32)
    sharding = NamedSharding(self.mesh, P(AXIS))
    self.x = jax.device_put(x, sharding)
    self.x_sq = jax.device_put(sq.astype(np.float32), sharding)


def top_k_search(queries, database, k: int, *, metric: str = "ip", query_block: int = 1024,
                 db_block: int = 65536, mesh: Mesh | None = None, approx: bool = False,
                 recall_target: float = 0.95):
  """The k best database rows of every query (exact; ties: lower index first).

  Args:
    queries: [Q, D] float32 / float16 / bfloat16 descriptors.
    database: [N, D] descriptors, or a ShardedDatabase built from them.
    k: results per query; capped at N.
    metric: "ip" (largest inner product first) or "l2" (smallest squared
      Euclidean distance first).
    query_block: queries per device step; db_block: database rows per scan
      step on each device. Working memory per device is about
      query_block x (db_block + 4k) float32 values.
    mesh: a 1-D mesh with axis "db" (default: every device, default_mesh()).
    approx, recall_target: jax.lax.approx_max_k per block (see module doc).

  Returns:
    (scores, indices): float32 [Q, k'] and int64 [Q, k'], k' = min(k, N).
    scores are inner products (descending) for "ip" and squared distances
    (ascending) for "l2". Q = 0 gives [0, k'] arrays.
  """
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}; got {metric!r}.")
  if k < 1:
    raise ValueError(f"k must be >= 1; got {k}.")
  if query_block < 1:
    raise ValueError(f"query_block must be >= 1; got {query_block}.")
  if not 0.0 < recall_target <= 1.0:
    raise ValueError(f"recall_target must be in (0, 1]; got {recall_target}.")
  q = _as_descriptors("queries", queries)
  if isinstance(database, ShardedDatabase):
    db = database
    if db.metric != metric:
      raise ValueError(f"The ShardedDatabase was built for metric={db.metric!r}; "
                       f"got metric={metric!r}. Build one per metric.")
  else:
    x = _as_descriptors("database", database)
    db = ShardedDatabase(x, metric=metric, db_block=db_block, mesh=mesh,
                         dtype=search_dtype(q, x))
  _checks.check_same(("queries dim", "database dim"), (q.shape[1], db.dim), "Descriptor sizes")
  k = min(int(k), db.num)
  if q.shape[0] == 0:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
  run = _compiled_search(db.mesh, db.num, k, metric, db.db_block, bool(approx),
                         float(recall_target))
  q = np.asarray(q, db.dtype)
  step = min(int(query_block), q.shape[0])
  replicated = NamedSharding(db.mesh, P())
  out_s, out_i = [], []
  for start in range(0, q.shape[0], step):
    block = q[start:start + step]
    if block.shape[0] < step:
      block = np.concatenate([block, np.zeros((step - block.shape[0], q.shape[1]), q.dtype)])
    s, i = run(jax.device_put(block, replicated), db.x, db.x_sq)
    n = min(step, q.shape[0] - start)
    out_s.append(np.asarray(s)[:n])
    out_i.append(np.asarray(i)[:n])
  scores = np.concatenate(out_s).astype(np.float32)
  idx = np.concatenate(out_i).astype(np.int64)
  return (-scores if metric == "l2" else scores), idx


def farthest_sq_distance(queries, database: ShardedDatabase, *,
                         query_block: int = 1024) -> np.ndarray:
  """max_j ||q - x_j||^2 for every query (float32 [Q]); database built with metric="l2"."""
  if database.metric != "l2":
    raise ValueError("farthest_sq_distance needs a ShardedDatabase built with metric='l2'.")
  q = np.asarray(_as_descriptors("queries", queries), database.dtype)
  run = _compiled_search(database.mesh, database.num, 1, "l2_far", database.db_block, False,
                         0.95)
  step = min(int(query_block), q.shape[0])
  out = []
  for start in range(0, q.shape[0], step):
    block = q[start:start + step]
    n = block.shape[0]
    if n < step:
      block = np.concatenate([block, np.zeros((step - n, q.shape[1]), q.dtype)])
    s, _ = run(jax.device_put(block, NamedSharding(database.mesh, P())), database.x,
               database.x_sq)
    out.append(np.asarray(s)[:n, 0])
  return np.concatenate(out).astype(np.float32)


def measured_recall(approx_indices, exact_indices) -> float:
  """Mean over queries of |approx top-k  intersect  exact top-k| / k."""
  a = np.asarray(approx_indices)
  e = np.asarray(exact_indices)
  if a.shape != e.shape or a.ndim != 2:
    raise ValueError(f"approx_indices and exact_indices must be [Q, k] of one shape; got "
                     f"{a.shape} and {e.shape}.")
  hits = [np.intersect1d(r, t).size for r, t in zip(a, e)]
  return float(np.mean(hits) / max(e.shape[1], 1))


def search_memory_per_device(num_queries: int, num_db: int, dim: int, k: int, *,
                             metric: str = "ip", query_block: int = 1024,
                             db_block: int = 65536, mesh: Mesh | None = None,
                             dtype=jnp.float32) -> dict:
  """Compiled memory of one query block's search on each device (XLA's analysis).

  Returns {"argument_bytes", "temp_bytes", "output_bytes", "database_bytes",
  "num_devices"} per device, from jit(...).lower(...).compile().memory_analysis()
  with abstract inputs (nothing is allocated).
  """
  del num_queries
  mesh = default_mesh() if mesh is None else mesh
  ndev = mesh.devices.size
  per_dev = -(-num_db // ndev)
  blk = min(int(db_block), per_dev)
  n_local = -(-per_dev // blk) * blk
  k = min(int(k), num_db)
  run = _compiled_search(mesh, num_db, k, metric, blk, False, 0.95)
  shard = NamedSharding(mesh, P(AXIS))
  args = (jax.ShapeDtypeStruct((query_block, dim), dtype, sharding=NamedSharding(mesh, P())),
          jax.ShapeDtypeStruct((n_local * ndev, dim), dtype, sharding=shard),
          jax.ShapeDtypeStruct((n_local * ndev,), jnp.float32, sharding=shard))
  mem = run.lower(*args).compile().memory_analysis()
  return {"argument_bytes": int(mem.argument_size_in_bytes),
          "temp_bytes": int(mem.temp_size_in_bytes),
          "output_bytes": int(mem.output_size_in_bytes),
          "database_bytes": int(n_local * (dim * jnp.dtype(dtype).itemsize + 4)),
          "num_devices": ndev}
