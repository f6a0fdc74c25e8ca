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
  largest array a device builds is one [query_block, db_block] key block.
- Each block's top-k is grouped: the block is cut into groups of GROUP rows and
  only the k groups with the largest maxima are searched (_block_top_k says
  why that is exact). A partial sort of every row of the block would cost
  about a seventh of the matmul's time on a CPU; the group maxima cost a pass.
- The per-device lists (k each) are concatenated in device order and merged by
  one more top-k. Shards hold consecutive rows and lax.top_k keeps the lower
  index first among equal values, so the merge is exact, tie order included:
  equal scores are ranked by ascending database index, as a stable sort of the
  whole row would.

Device memory: the shard (N / num_devices x D descriptors + N / num_devices
biases) plus the working space of one step, whatever N is: `step_bytes` =
4 B x (db_block x (D + 1) + query_block x (D + 3 db_block + 4k)) (the block's
rows, the queries, the key block with top-k's buffers, the lists).

Scores: "ip": q . x; "l2": ||q||^2 + ||x||^2 - 2 q . x clipped at 0 (the
expanded form, so one matmul serves both). The ranking key is q . x, or
2 q . x - ||x||^2 for "l2" (||q||^2 is the same for the whole row), plus -inf on
the rows that pad the last block. float32 descriptors multiply at
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


def query_gallery_features(query_features, gallery_features):
  """Both feature sets as float32 [Q, D] and [G, D], checked (same D, finite)."""
  qf = np.asarray(query_features, np.float32)
  gf = np.asarray(gallery_features, np.float32)
  _checks.check_rank("query_features", qf, 2, "[num_query, dim]")
  _checks.check_rank("gallery_features", gf, 2, "[num_gallery, dim]")
  _checks.check_same(("query_features dim", "gallery_features dim"),
                     (qf.shape[1], gf.shape[1]), "Feature sizes")
  _checks.check_finite("query_features", qf)
  _checks.check_finite("gallery_features", gf)
  return qf, gf


def search_dtype(queries: np.ndarray, database: np.ndarray):
  """bfloat16 when both sides are bfloat16, else float32 (float64 under x64)."""
  if queries.dtype == jnp.bfloat16 and database.dtype == jnp.bfloat16:
    return jnp.bfloat16
  dt = np.promote_types(np.result_type(queries.dtype, database.dtype), np.float32)
  if dt == np.float64 and not jax.config.jax_enable_x64:
    dt = np.float32
  return dt


GROUP = 32  # database rows per group in the grouped top-k (_block_top_k)


def block_keys(q, x, bias, q_sq, metric: str):
  """Ranking keys [B, C] of queries q [B, D] against rows x [C, D]; larger = nearer.

  "ip": q . x + bias. "l2": 2 q . x + bias with bias = -||x||^2, capped at
  ||q||^2: the key is ||q||^2 minus the squared distance clipped at 0, so keys
  rank exactly as distances do (q_sq [B, 1] holds ||q||^2; ignored for "ip").
  bias [C] is -inf on padding rows, which therefore never rank.
  """
  hi = None if q.dtype == jnp.bfloat16 else jax.lax.Precision.HIGHEST
  acc = jnp.float32 if q.dtype == jnp.bfloat16 else None
  # 2 q is exact in every float type, and folding ||x||^2 into one add keeps a
  # single elementwise pass over the score block after the matmul.
  qs = q + q if metric == "l2" else q
  key = jnp.matmul(qs, x.T, precision=hi, preferred_element_type=acc) + bias[None, :]
  return jnp.minimum(key, q_sq) if metric == "l2" else key


def _merge(best_s, best_i, s, i, k):
  """Top-k of [best | new]; best holds lower indices, so ties stay index-ordered."""
  v, pos = jax.lax.top_k(jnp.concatenate([best_s, s], axis=1), k)
  return v, jnp.take_along_axis(jnp.concatenate([best_i, i], axis=1), pos, axis=1)


def _block_top_k(key, idx, best_s, best_i, k):
  """The running top-k merged with one block's keys [B, C] (row indices idx [C]).

  A full top-k over C keys is a partial sort per query; instead the block is cut
  into groups of GROUP consecutive rows and only the k groups with the largest
  maxima are searched. That is exact: every row of the true top-k lies in a
  group whose maximum is at least the k-th best key, and at most k groups have
  one. Ties stay index-ordered: equal maxima pick the lower group, the chosen
  groups are taken in index order, and the running list (lower indices) goes
  first.
  """
  b, c = key.shape
  if c % GROUP or c // GROUP < k:
    v, j = jax.lax.top_k(key, min(k, c))
    return _merge(best_s, best_i, v, idx[j], k)
  groups = key.reshape(b, c // GROUP, GROUP)
  _, top_groups = jax.lax.top_k(jnp.max(groups, axis=2), k)
  top_groups = jnp.sort(top_groups, axis=1)
  cand = jnp.take_along_axis(groups, top_groups[:, :, None], axis=1).reshape(b, k * GROUP)
  cand_i = idx.reshape(c // GROUP, GROUP)[top_groups].reshape(b, k * GROUP)
  return _merge(best_s, best_i, cand, cand_i, k)


def _shard_top_k(q, x, bias, *, k, metric, db_block, approx, recall_target, farthest):
  """The running top-k keys of q [B, D] over this device's shard x [n_local, D],
  and (farthest) the running minimum key over real rows."""
  n_local, dim = x.shape
  nb = n_local // db_block
  offset = jax.lax.axis_index(AXIS) * n_local
  sdt = jnp.float32 if q.dtype == jnp.bfloat16 else jnp.promote_types(q.dtype, jnp.float32)
  q_sq = jnp.sum(jnp.square(q.astype(sdt)), axis=-1, keepdims=True)

  def step(carry, inputs):
    best_s, best_i, low = carry
    xb, bb, start = inputs
    key = block_keys(q, xb, bb, q_sq, metric)
    idx = start + jnp.arange(db_block, dtype=jnp.int32)
    if farthest:  # compiled only when asked: it is one more pass over the block
      low = jnp.minimum(low, jnp.min(jnp.where(bb[None, :] > -jnp.inf, key, jnp.inf), axis=1))
    if approx:
      v, j = jax.lax.approx_max_k(key, min(k, db_block), recall_target=recall_target)
      best = _merge(best_s, best_i, v, idx[j], k)
    else:
      best = _block_top_k(key, idx, best_s, best_i, k)
    return best + (low,), None

  starts = offset + db_block * jnp.arange(nb, dtype=jnp.int32)
  # Built from the device's offset so the carry varies over the mesh axis like
  # the scan's outputs (shard_map's type check), on every jax version.
  zero = offset * 0
  init = (jnp.full((q.shape[0], k), -jnp.inf, sdt) + zero.astype(sdt),
          jnp.full((q.shape[0], k), -1, jnp.int32) + zero,
          jnp.full((q.shape[0],), jnp.inf, sdt) + zero.astype(sdt))
  (best_s, best_i, low), _ = jax.lax.scan(
      step, init, (x.reshape(nb, db_block, dim), bias.reshape(nb, db_block), starts))
  return best_s, best_i, low[:, None]


@functools.lru_cache(maxsize=32)
def _compiled_search(mesh: Mesh, k: int, metric: str, db_block: int, approx: bool,
                     recall_target: float, farthest: bool = False):
  body = functools.partial(_shard_top_k, k=k, metric=metric, db_block=db_block,
                           approx=approx, recall_target=recall_target, farthest=farthest)
  sharded = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)),
                          out_specs=(P(None, AXIS), P(None, AXIS), P(None, AXIS)))

  @jax.jit
  def run(q, x, bias):
    # [B, num_devices * k] keys, device order = index order, so one more top-k
    # merges exactly; keys of one query compare across devices.
    key, i, low = sharded(q, x, bias)
    v, pos = jax.lax.top_k(key, k)
    low = jnp.min(low, axis=1)
    if metric == "l2":  # scores: minus the squared distance, clipped at 0
      q_sq = jnp.sum(jnp.square(q.astype(v.dtype)), axis=-1, keepdims=True)
      v, low = v - q_sq, jnp.maximum(q_sq[:, 0] - low, 0.0)
    else:
      low = -low
    return v, jnp.take_along_axis(i, pos, axis=1), low

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

  def __init__(self, database, *, metric: str = "ip", db_block: int = 32768,
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
    self.db_block, n_local = _block_layout(self.num, self.mesh.devices.size, db_block)
    pad = n_local * self.mesh.devices.size - self.num
    x = np.asarray(x, self.dtype)
    xf = x if x.dtype == np.float32 else x.astype(np.float32)
    # bias: what the key adds to q . x (block_keys); -inf ranks padding last.
    bias = -np.einsum("nd,nd->n", xf, xf) if metric == "l2" else np.zeros(self.num, np.float32)
    del xf
    if pad:
      x = np.concatenate([x, np.zeros((pad, self.dim), x.dtype)])
      bias = np.concatenate([bias, np.full(pad, -np.inf, np.float32)])
    sharding = NamedSharding(self.mesh, P(AXIS))
    self.x = jax.device_put(x, sharding)
    self.bias = jax.device_put(bias.astype(np.float32), sharding)


def _block_layout(num: int, num_devices: int, db_block: int) -> tuple[int, int]:
  """(rows per scan step, rows per device) for num rows over num_devices.

  Equal blocks: each device's share in ceil(share / db_block) steps, so the
  padding is under one row per step; blocks of at least 4 groups are rounded up
  to whole groups of GROUP rows (the grouped top-k, _block_top_k).
  """
  per_dev = -(-num // num_devices)
  steps = -(-per_dev // min(int(db_block), per_dev))
  block = -(-per_dev // steps)
  if block >= 4 * GROUP:
    block = -(-block // GROUP) * GROUP
  return block, steps * block


def top_k_search(queries, database, k: int, *, metric: str = "ip", query_block: int = 1024,
                 db_block: int = 32768, mesh: Mesh | None = None, approx: bool = False,
                 recall_target: float = 0.95, return_farthest: bool = False):
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
    return_farthest: also return, from the same pass, each query's largest
      squared distance ("l2") or minus its smallest inner product ("ip").

  Returns:
    (scores, indices): float32 [Q, k'] and int64 [Q, k'], k' = min(k, N).
    scores are inner products (descending) for "ip" and squared distances
    (ascending) for "l2". Q = 0 gives [0, k'] arrays. With return_farthest,
    (scores, indices, farthest float32 [Q]).
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
    empty = (np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
    return empty + (np.zeros((0,), np.float32),) if return_farthest else empty
  run = _compiled_search(db.mesh, k, metric, db.db_block, bool(approx),
                         float(recall_target), bool(return_farthest))
  q = np.asarray(q, db.dtype)
  step = min(int(query_block), q.shape[0])
  replicated = NamedSharding(db.mesh, P())
  out_s, out_i, out_f = [], [], []
  for start in range(0, q.shape[0], step):
    block = q[start:start + step]
    if block.shape[0] < step:
      block = np.concatenate([block, np.zeros((step - block.shape[0], q.shape[1]), q.dtype)])
    s, i, far = run(jax.device_put(block, replicated), db.x, db.bias)
    n = min(step, q.shape[0] - start)
    out_s.append(np.asarray(s)[:n])
    out_i.append(np.asarray(i)[:n])
    out_f.append(np.asarray(far)[:n])
  scores = np.concatenate(out_s).astype(np.float32)
  idx = np.concatenate(out_i).astype(np.int64)
  out = (-scores if metric == "l2" else scores), idx
  return out + (np.concatenate(out_f).astype(np.float32),) if return_farthest else out


def measured_recall(approx_indices, exact_indices) -> float:
  """Mean over queries of |approx top-k  intersect  exact top-k| / k."""
  a = np.asarray(approx_indices)
  e = np.asarray(exact_indices)
  if a.shape != e.shape or a.ndim != 2:
    raise ValueError(f"approx_indices and exact_indices must be [Q, k] of one shape; got "
                     f"{a.shape} and {e.shape}.")
  hits = [np.intersect1d(r, t).size for r, t in zip(a, e)]
  return float(np.mean(hits) / max(e.shape[1], 1))


def step_bytes(dim: int, k: int, *, query_block: int, db_block: int) -> int:
  """The stated bound on one search step's working memory per device (float32)."""
  return 4 * (db_block * (dim + 1) + query_block * (dim + 3 * db_block + 4 * k))


def search_memory_per_device(num_queries: int, num_db: int, dim: int, k: int, *,
                             metric: str = "ip", query_block: int = 1024,
                             db_block: int = 32768, mesh: Mesh | None = None,
                             dtype=jnp.float32) -> dict:
  """Compiled memory of one query block's search on each device (XLA's analysis).

  Returns {"argument_bytes", "temp_bytes", "output_bytes", "database_bytes",
  "num_devices"} per device, from jit(...).lower(...).compile().memory_analysis()
  with abstract inputs (nothing is allocated).
  """
  del num_queries
  mesh = default_mesh() if mesh is None else mesh
  ndev = mesh.devices.size
  blk, n_local = _block_layout(num_db, ndev, db_block)
  k = min(int(k), num_db)
  run = _compiled_search(mesh, k, metric, blk, False, 0.95)
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
