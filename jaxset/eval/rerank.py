"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) and query expansion, memory-bounded.

`k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3)`
computes what torchreid's `re_ranking` computes on the same matrices
(docs/evaluation.md, "Re-ranking"), with the same quirks:
- the (Q+G) x (Q+G) matrix [[q_q, q_g], [q_g^T, g_g]] is squared (np.power, then
  float32) and divided by its column maxima, then transposed: O[i, j] =
  D[j, i]^2 / max_m D[m, i]^2;
- the neighbour lists are argsort(O[i]) (jaxset: a stable order, ties by
  index; numpy's quicksort leaves their order unspecified);
- R(i) = the k1-reciprocal set: j in the first k1 + 1 of i's list and i in
  the first k1 + 1 of j's. It grows by R_h(c) for each c in R(i) whose
  round(k1 / 2)-reciprocal set R_h(c) has more than 2/3 of its members in
  R(i) (eq. (7) of the paper; round() halves to even, as numpy's around);
- V[i, j] = exp(-O[i, j]) / sum, over the expanded set (eq. (8));
- local query expansion: V[i] = the mean of V over i's k2 first neighbours
  (eq. (11));
- Jaccard distance d_J(i, j) = 1 - m / (2 - m), m = sum_k min(V[i, k], V[j, k])
  (eq. (10) with the sums of V equal to 1);
- final = (1 - lambda) d_J + lambda O, query rows x gallery columns (eq. (12)).

No (Q+G)^2 array is built. The neighbour lists have k1 + 1 entries, V is
held as [Q+G, w] (index, weight) rows with w <= (k1 + 1)(round(k1/2) + 2), and
the Jaccard sums run over the pairs that share a column of V (an inverted
index), `pair_budget` pairs per device step. The device work is jit-compiled
per block; shapes are padded to powers of two so a few programs serve every
block.

`k_reciprocal_rerank_features` does the same from features (torchreid's
distance: squared Euclidean, or cosine) with the top-k search of
jaxset.eval.search, and can return only the re-ranked top-k of each query, so
that nothing of size (Q+G)^2 or, with top_k, Q x G is held: the route for
MSMT17's 82k gallery (benchmarks/retrieval.py measured it up to 30k samples).

Query expansion: `average_query_expansion` (AQE, Chum et al. 2007) and
`alpha_query_expansion` (alpha-QE, Radenovic et al., TPAMI 2019), and
`database_side_augmentation` (DBA, Arandjelovic & Zisserman 2012).
"""
from __future__ import annotations

import functools
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxset.eval import search
from jaxset.ops import _checks

CHUNK = 16  # inverted-index entries per (query entry, chunk) pair


def _pow2(n: int, floor: int = 8) -> int:
  return max(floor, 1 << int(np.ceil(np.log2(max(n, 1)))))


def _min_common(h1: int) -> np.ndarray:
  """Smallest intersection size m with m > 2/3 * n, for n = 0..h1, in float64 as
  torchreid compares it (2/3 * 3 rounds to 2.0, so n = 3 needs 3)."""
  return np.array([int(np.floor(2.0 / 3 * n)) + 1 for n in range(h1 + 1)], np.int32)


@functools.partial(jax.jit, static_argnames=("kk",))
def _reciprocal(neigh, rows, *, kk):
  """recip[b, a]: rows[b] is among the first kk neighbours of neigh[rows[b], a], a < kk."""
  nb = neigh[rows, :kk]
  back = neigh[nb][:, :, :kk]
  return jnp.any(back == rows[:, None, None], axis=-1)


def _candidates(neigh: np.ndarray, rows: np.ndarray, h1: int) -> np.ndarray:
  """[B, K + K * h1]: i's K neighbours, then each one's first h1 neighbours."""
  nb = neigh[rows]
  return np.concatenate([nb, neigh[nb][:, :, :h1].reshape(len(rows), -1)], axis=1)


@jax.jit
def _v_rows(rows, neigh, recip_k, recip_h, min_common, o_vals, n):
  """V rows (eq. (8)) of `rows`: sorted column indices (n = none) and weights."""
  nb = neigh[rows]  # [B, K]
  kk = nb.shape[1]
  h1 = recip_h.shape[1]
  rk = recip_k[rows]  # [B, K]
  cand = neigh[nb][:, :, :h1]  # [B, K, h1]
  cand_r = recip_h[nb]  # [B, K, h1]
  in_r = jnp.any((cand[..., None] == nb[:, None, None, :]) & rk[:, None, None, :], axis=-1)
  inter = jnp.sum(cand_r & in_r, axis=-1)
  qualifies = rk & (inter >= min_common[jnp.sum(cand_r, axis=-1)])
  idx = jnp.concatenate([nb, cand.reshape(len(rows), kk * h1)], axis=1)
  valid = jnp.concatenate([rk, (qualifies[..., None] & cand_r).reshape(len(rows), -1)], axis=1)
  key = jnp.where(valid, idx, n)
  order = jnp.argsort(key, axis=1, stable=True)
  key = jnp.take_along_axis(key, order, axis=1)
  first = jnp.concatenate([jnp.ones_like(key[:, :1], bool), key[:, 1:] != key[:, :-1]], axis=1)
  keep = first & (key < n)
  w = jnp.where(keep, jnp.exp(-jnp.take_along_axis(o_vals, order, axis=1)), 0.0)
  val = w / jnp.sum(w, axis=1, keepdims=True)
  # Kept entries first (sorted by column), so the caller can cut the width.
  pos = jnp.argsort(~keep, axis=1, stable=True)
  return (jnp.take_along_axis(jnp.where(keep, key, n), pos, axis=1),
          jnp.take_along_axis(val, pos, axis=1))


@functools.partial(jax.jit, static_argnames=("k2",))
def _qe_rows(rows, neigh, v_idx, v_val, n, *, k2):
  """Local query expansion (eq. (11)): mean of V over each row's k2 first neighbours."""
  b = rows.shape[0]
  m = neigh[rows, :k2]
  idx = v_idx[m].reshape(b, -1)
  val = v_val[m].reshape(b, -1)
  order = jnp.argsort(idx, axis=1, stable=True)
  idx = jnp.take_along_axis(idx, order, axis=1)
  val = jnp.take_along_axis(val, order, axis=1)
  first = jnp.concatenate([jnp.ones_like(idx[:, :1], bool), idx[:, 1:] != idx[:, :-1]], axis=1)
  seg = jnp.cumsum(first, axis=1) - 1
  r = jnp.arange(b)[:, None]
  sums = jnp.zeros_like(val).at[r, seg].add(val)
  out_idx = jnp.full_like(idx, n).at[r, seg].min(idx)
  return out_idx, jnp.where(out_idx < n, sums / k2, 0.0)


@functools.partial(jax.jit, static_argnames=("num_pairs",))
def _final_block(ent_row, ent_col, ent_val, ent_count, chunk_start, chunk_row, chunk_val, o_qg,
                 lambda_value, *, num_pairs):
  """Eq. (12) for a block of query rows: (1 - lambda) d_J + lambda O.

  m[i, j] = sum_k min(V[i, k], V[j, k]). The inverted index holds column k's
  entries (j, V[j, k]) in ent_count[e] chunks of CHUNK; each query entry
  (i, k, V[i, k]) meets every chunk of its column, num_pairs (padded)
  (entry, chunk) pairs in all, added into the [B, G] block.
  """
  num_rows, num_cols = o_qg.shape
  cum = jnp.cumsum(ent_count)
  prev = cum - ent_count
  p = jnp.arange(num_pairs, dtype=cum.dtype)
  e = jnp.minimum(jnp.searchsorted(cum, p, side="right"), ent_count.shape[0] - 1)
  ok = p < cum[-1]
  chunk = jnp.where(ok, chunk_start[ent_col[e]] + p - prev[e], 0)
  contrib = jnp.where(ok[:, None], jnp.minimum(ent_val[e][:, None], chunk_val[chunk]), 0.0)
  flat = ent_row[e][:, None] * num_cols + chunk_row[chunk]
  m = jnp.zeros(num_rows * num_cols, jnp.float32).at[flat.reshape(-1)].add(
      contrib.reshape(-1)).reshape(num_rows, num_cols)
  return (1.0 - m / (2.0 - m)) * (1.0 - lambda_value) + o_qg * lambda_value


@functools.partial(jax.jit, static_argnames=("k",))
def _smallest(x, k):
  v, i = jax.lax.top_k(-x, k)
  return -v, i


def _pad_to(x: np.ndarray, size: int, value) -> np.ndarray:
  """x padded along axis 0 to `size` rows with `value`."""
  if x.shape[0] >= size:
    return x
  return np.concatenate([x, np.full((size - x.shape[0],) + x.shape[1:], value, x.dtype)])


class _Problem(Protocol):
  """What the algorithm needs from either entry point (the matrices or the features)."""

  num_q: int
  num_g: int
  neigh: np.ndarray  # [N, max(k1 + 1, k2)] int32

  def o_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """O[rows[b], cols[b, c]] as float32 [B, C]."""
    ...

  def o_query_gallery(self, rows: np.ndarray) -> np.ndarray:
    """O[rows, Q:] as float32 [B, G] (device or host array)."""
    ...


def _rerank_core(prob: _Problem, k1: int, k2: int, lambda_value: float, *, row_block: int,
                 pair_budget: int, finish: Callable):
  n = prob.num_q + prob.num_g
  kk = min(k1 + 1, n)
  h1 = min(int(np.around(k1 / 2.0)) + 1, n)
  k2 = min(k2, n)
  # Arrays over all rows are padded to a power of two (and widths to a multiple
  # of 16) so that a few compiled programs serve every problem size.
  n_pad = _pow2(n + 1)
  n_d = jnp.int32(n)
  neigh_np = np.ascontiguousarray(prob.neigh, np.int32)
  neigh = jnp.asarray(_pad_to(neigh_np, n_pad, 0))
  min_common = jnp.asarray(_min_common(h1))
  blocks = [np.arange(s, min(s + row_block, n), dtype=np.int32) for s in range(0, n, row_block)]

  def padded(rows):
    return _pad_to(rows, row_block, rows[-1])

  def recip(kk_):
    out = np.concatenate([np.asarray(_reciprocal(neigh, padded(r), kk=kk_))[:len(r)]
                          for r in blocks])
    return jnp.asarray(_pad_to(out, n_pad, False))

  recip_k, recip_h = recip(kk), recip(h1)
  neigh_k = neigh[:, :kk]
  v_idx, v_val = [], []
  for r in blocks:
    rp = padded(r)
    o_vals = prob.o_at(rp, _candidates(neigh_np[:, :kk], rp, h1))
    i, v = _v_rows(jnp.asarray(rp), neigh_k, recip_k, recip_h, min_common,
                   jnp.asarray(o_vals, jnp.float32), n_d)
    v_idx.append(np.asarray(i)[:len(r)])
    v_val.append(np.asarray(v)[:len(r)])
  v_idx, v_val = _compact(np.concatenate(v_idx), np.concatenate(v_val), n, n_pad)
  if k2 != 1:
    vi, vv = jnp.asarray(v_idx), jnp.asarray(v_val)
    q_idx, q_val = [], []
    for r in blocks:
      i, v = _qe_rows(jnp.asarray(padded(r)), neigh, vi, vv, n_d, k2=k2)
      q_idx.append(np.asarray(i)[:len(r)])
      q_val.append(np.asarray(v)[:len(r)])
    v_idx, v_val = _compact(np.concatenate(q_idx), np.concatenate(q_val), n, n_pad)
  _jaccard_rows(prob, v_idx[:n], v_val[:n], lambda_value, pair_budget, row_block, finish)


def _compact(idx: np.ndarray, val: np.ndarray, n: int, n_pad: int):
  """Cuts the [N, w] rows to the widest row's support (entries come first),
  rounded up to a multiple of 16, and pads the rows to n_pad."""
  width = min(-(-max(int((idx < n).sum(axis=1).max()), 1) // 16) * 16, idx.shape[1])
  return (_pad_to(idx[:, :width], n_pad, n),
          _pad_to(val[:, :width].astype(np.float32), n_pad, 0.0))


def _jaccard_rows(prob, v_idx, v_val, lambda_value, pair_budget, row_block, finish):
  """Query rows of the final distance (eq. (12)), handed to finish(rows, block)."""
  nq, ng = prob.num_q, prob.num_g
  n = nq + ng
  # Inverted index over the gallery rows: column k's entries (j, V[j, k]) in
  # chunks of CHUNK (zero-padded: min(a, 0) adds nothing).
  g_idx, g_val = v_idx[nq:], v_val[nq:]
  valid = g_idx < n
  cols = g_idx[valid]
  order = np.argsort(cols, kind="stable")
  cols_s = cols[order]
  col_count = np.bincount(cols, minlength=n + 1).astype(np.int64)
  col_first = np.r_[0, np.cumsum(col_count)[:-1]]
  nchunks = -(-col_count // CHUNK)
  chunk_first = np.r_[0, np.cumsum(nchunks)[:-1]]
  in_col = np.arange(cols_s.size) - col_first[cols_s]
  chunk_id = chunk_first[cols_s] + in_col // CHUNK
  num_chunks = _pow2(int(nchunks.sum()) + 1)
  chunk_row = np.zeros((num_chunks, CHUNK), np.int32)
  chunk_val = np.zeros((num_chunks, CHUNK), np.float32)
  chunk_row[chunk_id, in_col % CHUNK] = np.nonzero(valid)[0][order]
  chunk_val[chunk_id, in_col % CHUNK] = g_val[valid][order]
  chunk_row, chunk_val = jnp.asarray(chunk_row), jnp.asarray(chunk_val)
  chunk_start_d = jnp.asarray(_pad_to(chunk_first.astype(np.int32), _pow2(n + 1), 0))
  col_count = nchunks  # from here on, counts are in chunks
  pair_budget = max(pair_budget // CHUNK, 1)
  q_idx, q_val = v_idx[:nq], v_val[:nq]
  pairs_per_query = np.where(q_idx < n, col_count[q_idx], 0).sum(axis=1)
  lam = jnp.float32(lambda_value)
  # One block shape for every block (one compiled program): b rows, the pair
  # budget (or all pairs when fewer); a single query above the budget gets its own.
  b_fixed = _pow2(min(row_block, nq), 1)
  pairs_fixed = min(_pow2(int(pairs_per_query.sum()), 1024), _pow2(pair_budget, 1024))
  start = 0
  while start < nq:
    stop = start + 1
    total = pairs_per_query[start]
    while (stop < nq and stop - start < row_block
           and total + pairs_per_query[stop] <= pair_budget):
      total += pairs_per_query[stop]
      stop += 1
    rows = np.arange(start, stop)
    rows_p = _pad_to(rows, b_fixed, rows[-1])
    e_col = q_idx[rows].reshape(-1)
    e_ok = e_col < n
    e_col = np.where(e_ok, e_col, n).astype(np.int32)
    e_count = np.where(e_ok, col_count[e_col], 0).astype(np.int32)
    e_row = np.repeat(np.arange(len(rows), dtype=np.int32), q_idx.shape[1])
    size = _pow2(b_fixed * q_idx.shape[1])
    block = _final_block(
        jnp.asarray(_pad_to(e_row, size, 0)), jnp.asarray(_pad_to(e_col, size, n)),
        jnp.asarray(_pad_to(q_val[rows].reshape(-1), size, 0.0)),
        jnp.asarray(_pad_to(e_count, size, 0)), chunk_start_d, chunk_row, chunk_val,
        jnp.asarray(prob.o_query_gallery(rows_p)), lam,
        num_pairs=max(pairs_fixed, _pow2(int(total), 1024)))
    finish(rows, block)
    start = stop


def _check_params(k1, k2, lambda_value):
  if k1 < 1 or k2 < 1:
    raise ValueError(f"k1 and k2 must be >= 1; got k1={k1}, k2={k2}.")
  if not 0.0 <= lambda_value <= 1.0:
    raise ValueError(f"lambda_value must be in [0, 1]; got {lambda_value}.")


class _MatrixProblem(_Problem):
  """The three distance matrices, used in row blocks (never concatenated)."""

  def __init__(self, q_g, q_q, g_g, k, row_block):
    self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
    self.num_q, self.num_g = q_g.shape
    n = self.num_q + self.num_g
    # Column maxima of the squared full matrix: column i < Q holds q_q[:, i]
    # and q_g[i, :]; column Q + g holds q_g[:, g] and g_g[:, g].
    self.col_max = np.concatenate([
        np.maximum(self._sq(q_q).max(axis=0, initial=-np.inf),
                   self._sq(q_g).max(axis=1, initial=-np.inf)),
        np.maximum(self._sq(q_g).max(axis=0, initial=-np.inf),
                   self._sq(g_g).max(axis=0, initial=-np.inf))]).astype(np.float32)
    if not (self.col_max > 0).all():
      raise ValueError("A column of the distance matrix [[q_q, q_g], [q_g^T, g_g]] is all zero, "
                       "so torchreid's normalisation divides by 0; remove duplicate samples.")
    neigh = np.empty((n, k), np.int32)
    for s in range(0, n, row_block):
      rows = np.arange(s, min(s + row_block, n))
      o = jnp.asarray(self._o_rows(rows))
      neigh[rows] = np.asarray(jax.lax.top_k(-o, k)[1])
    self.neigh = neigh

  @staticmethod
  def _sq(d):
    return np.power(d, 2).astype(np.float32)

  def _o_rows(self, rows):
    """O[rows, :] = column `rows` of the squared full matrix / its maximum."""
    q = self.num_q
    out = np.empty((len(rows), q + self.num_g), np.float32)
    is_q = rows < q
    rq, rg = rows[is_q], rows[~is_q] - q
    out[is_q] = np.concatenate([self._sq(self.q_q[:, rq].T), self._sq(self.q_g[rq])], axis=1)
    out[~is_q] = np.concatenate([self._sq(self.q_g[:, rg].T), self._sq(self.g_g[:, rg].T)],
                                axis=1)
    return out / self.col_max[rows, None]

  def o_at(self, rows, cols):
    q = self.num_q
    r = np.broadcast_to(rows[:, None], cols.shape)
    # O[i, j] = full[j, i]^2 / col_max[i]; full[j, i] read from its block.
    d = np.empty(cols.shape, self.q_g.dtype)
    jq, iq = cols < q, r < q
    for jm, im, get in (
        (jq, iq, lambda j, i: self.q_q[j, i]),
        (jq, ~iq, lambda j, i: self.q_g[j, i - q]),
        (~jq, iq, lambda j, i: self.q_g[i, j - q]),
        (~jq, ~iq, lambda j, i: self.g_g[j - q, i - q])):
      m = jm & im
      d[m] = get(cols[m], r[m])
    return self._sq(d) / self.col_max[r]

  def o_query_gallery(self, rows):
    return self._sq(self.q_g[rows]) / self.col_max[rows, None]


def k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3, *, row_block: int = 1024,
                        pair_budget: int = 1 << 22) -> np.ndarray:
  """k-reciprocal re-ranked distances [Q, G] (Zhong et al., CVPR 2017, eq. (12)).

  Equals torchreid's re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2,
  lambda_value) (see the module doc for its steps) up to float32 rounding,
  except where exactly equal distances make numpy's unstable argsort order
  neighbours differently (jaxset ranks ties by index).

  Args:
    q_g_dist: [Q, G], q_q_dist: [Q, Q], g_g_dist: [G, G] distances (torchreid
      passes squared Euclidean distances, which are squared again here).
    k1, k2, lambda_value: the paper's k1, k2 and lambda.
    row_block: rows per device step; pair_budget: Jaccard pairs per step.
      Extra memory beyond the inputs: O((Q+G)(k1^2 + w)) plus one
      [row_block, Q+G] float32 block and pair_budget pairs.

  Returns:
    float32 [Q, G]; smaller = more similar.
  """
  _check_params(k1, k2, lambda_value)
  q_g = np.asarray(q_g_dist)
  q_q = np.asarray(q_q_dist)
  g_g = np.asarray(g_g_dist)
  _checks.check_rank("q_g_dist", q_g, 2, "[num_query, num_gallery]")
  nq, ng = q_g.shape[:2]
  _checks.check_shape("q_q_dist", q_q, (nq, nq), "[num_query, num_query]")
  _checks.check_shape("g_g_dist", g_g, (ng, ng), "[num_gallery, num_gallery]")
  if q_g.ndim != 2 or nq == 0 or ng == 0:
    raise ValueError(f"Need a [Q, G] q_g_dist with Q, G >= 1; got shape {q_g.shape}.")
  for name, x in (("q_g_dist", q_g), ("q_q_dist", q_q), ("g_g_dist", g_g)):
    _checks.check_finite(name, x)
  k = min(max(k1 + 1, k2), nq + ng)
  prob = _MatrixProblem(q_g, q_q, g_g, k, row_block)
  out = np.empty((nq, ng), np.float32)

  def finish(rows, block):
    out[rows] = np.asarray(block)[:len(rows)]

  _rerank_core(prob, k1, k2, lambda_value, row_block=row_block, pair_budget=pair_budget,
               finish=finish)
  return out


@functools.partial(jax.jit, static_argnames=("metric",))
def _pair_distances(feats, rows, cols, metric):
  """torchreid's distances between feats[rows] [B, D] and feats[cols] [B, C, D]."""
  a = feats[rows]
  b = feats[cols]
  dot = jnp.einsum("bd,bcd->bc", a, b, precision=jax.lax.Precision.HIGHEST)
  if metric == "cosine":
    return 1.0 - dot
  return jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1) - 2.0 * dot


class _FeatureProblem(_Problem):
  """Distances computed on device from features, in blocks."""

  def __init__(self, qf, gf, metric, k, query_block, db_block):
    self.metric = metric
    self.num_q, self.num_g = qf.shape[0], gf.shape[0]
    feats = np.concatenate([qf, gf]).astype(np.float32)
    if metric == "cosine":
      feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    self.feats_d = jnp.asarray(feats)
    self.gallery_d = jnp.asarray(feats[self.num_q:])
    sm = "ip" if metric == "cosine" else "l2"
    everything = search.ShardedDatabase(feats, metric=sm, db_block=db_block)
    _, self.neigh, far = search.top_k_search(feats, everything, k, metric=sm,
                                             query_block=query_block, return_farthest=True)
    self.neigh = self.neigh.astype(np.int32)
    # Column maximum of the squared distances = row maximum (symmetric):
    # 1 - min_j cos = 1 + max_j (-cos) for cosine.
    dmax = 1.0 + far if metric == "cosine" else far
    self.col_max = np.square(dmax.astype(np.float32))

  def o_at(self, rows, cols):
    # 32 rows at a time: the gathered [32, w, D] block is the largest array.
    out = np.empty(cols.shape, np.float32)
    for s in range(0, len(rows), 32):
      r = _pad_to(rows[s:s + 32], 32, rows[-1])
      c = _pad_to(cols[s:s + 32], 32, 0)
      d = np.asarray(_pair_distances(self.feats_d, r, c, self.metric))
      out[s:s + 32] = d[:len(cols[s:s + 32])]
    return np.square(out) / self.col_max[rows, None]

  def o_query_gallery(self, rows):
    return _qg_block(self.feats_d, jnp.asarray(rows), self.gallery_d,
                     jnp.asarray(self.col_max[rows]), self.metric)


@functools.partial(jax.jit, static_argnames=("metric",))
def _qg_block(feats, rows, g, col_max, metric):
  q = feats[rows]
  dot = jnp.matmul(q, g.T, precision=jax.lax.Precision.HIGHEST)
  if metric == "cosine":
    d = 1.0 - dot
  else:
    d = jnp.sum(q * q, -1)[:, None] + jnp.sum(g * g, -1)[None, :] - 2.0 * dot
  return jnp.square(d) / col_max[:, None]


def k_reciprocal_rerank_features(query_features, gallery_features, k1: int = 20, k2: int = 6,
                                 lambda_value: float = 0.3, *, metric: str = "euclidean",
                                 top_k: int | None = None, row_block: int = 512,
                                 pair_budget: int = 1 << 22, db_block: int = 16384):
  """k-reciprocal re-ranking from features, for galleries of MSMT17's size.

  The same algorithm as `k_reciprocal_rerank` on torchreid's distances:
  metric="euclidean" (squared Euclidean, torchreid's default) or "cosine"
  (1 - cosine similarity). Neighbour lists come from search.top_k_search, so
  no [Q+G, Q+G] matrix exists; the [Q, G] result does unless top_k is given.

  Returns:
    top_k None: float32 [Q, G] re-ranked distances. Otherwise
    (distances float32 [Q, top_k] ascending, gallery indices int64 [Q, top_k]),
    ties by index.
  """
  _check_params(k1, k2, lambda_value)
  if metric not in ("euclidean", "cosine"):
    raise ValueError(f"metric must be 'euclidean' or 'cosine'; got {metric!r}.")
  qf, gf = search.query_gallery_features(query_features, gallery_features)
  if qf.shape[0] == 0 or gf.shape[0] == 0:
    raise ValueError(f"Need at least one query and one gallery row; got {qf.shape[0]}, "
                     f"{gf.shape[0]}.")
  nq, ng = qf.shape[0], gf.shape[0]
  k = min(max(k1 + 1, k2), nq + ng)
  prob = _FeatureProblem(qf, gf, metric, k, row_block, db_block)
  if top_k is None:
    out = np.empty((nq, ng), np.float32)

    def finish(rows, block):
      out[rows] = np.asarray(block)[:len(rows)]
  else:
    kt = min(int(top_k), ng)
    out_d = np.empty((nq, kt), np.float32)
    out_i = np.empty((nq, kt), np.int64)

    def finish(rows, block):
      v, i = _smallest(block, kt)
      out_d[rows] = np.asarray(v)[:len(rows)]
      out_i[rows] = np.asarray(i)[:len(rows)]

  _rerank_core(prob, k1, k2, lambda_value, row_block=row_block, pair_budget=pair_budget,
               finish=finish)
  return out if top_k is None else (out_d, out_i)


def average_query_expansion(query_features, database_features, k: int = 5, *,
                            alpha: float = 0.0, normalize: bool = True):
  """Average query expansion (AQE, alpha = 0) and alpha-QE (Radenovic et al. 2019).

  Each query is replaced by sum_{j in {q} + top-k} w_j x_j with w = 1 for the
  query and (q . x_j)^alpha (similarity clipped at 0) for its k nearest
  database rows by inner product; alpha = 0 gives the plain mean of AQE. The
  result is L2-normalised when `normalize` (descriptors are assumed
  L2-normalised, as in the papers). Returns float32 [Q, D].
  """
  q = np.asarray(query_features, np.float32)
  x = np.asarray(database_features, np.float32)
  if k < 1:
    raise ValueError(f"k must be >= 1; got {k}.")
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0; got {alpha}.")
  s, idx = search.top_k_search(q, x, k, metric="ip")
  w = np.power(np.maximum(s, 0.0), alpha) if alpha > 0 else np.ones_like(s)
  out = q + np.einsum("qk,qkd->qd", w, x[idx])
  if normalize:
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
  elif alpha == 0:
    out /= k + 1
  return out.astype(np.float32)


def alpha_query_expansion(query_features, database_features, k: int = 10,
                          alpha: float = 3.0):
  """alpha-QE (Radenovic, Tolias, Chum, TPAMI 2019): AQE with weights sim^alpha."""
  return average_query_expansion(query_features, database_features, k, alpha=alpha)


def database_side_augmentation(database_features, k: int = 5, alpha: float = 0.0):
  """DBA: every database row replaced by its own (alpha-)query expansion over the
  database (itself included among the neighbours, as in the usual recipe
  x_j' = normalise(sum over its top-k incl. itself)). Returns float32 [N, D]."""
  x = np.asarray(database_features, np.float32)
  s, idx = search.top_k_search(x, x, k, metric="ip")
  w = np.power(np.maximum(s, 0.0), alpha) if alpha > 0 else np.ones_like(s)
  out = np.einsum("nk,nkd->nd", w, x[idx])
  out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
  return out.astype(np.float32)
