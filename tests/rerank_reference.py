"""A dense numpy reference of k-reciprocal re-ranking, written from the paper
(Zhong et al., CVPR 2017) and the steps torchreid's re_ranking takes
(docs/evaluation.md, "Re-ranking"): the whole (Q+G)^2 matrices, one row at a
time, as the popular code does. `dtype` is the precision of everything after
the normalised distance O (float64 for the parity tests; float32 is what
torchreid uses, for the benchmark). O itself is made as torchreid makes it:
squared in the input dtype, then float32, then divided by the column maxima.
Neighbour lists use a stable argsort (ties by index).
"""
from __future__ import annotations

import numpy as np


def reciprocal_set(rank: np.ndarray, i: int, k: int) -> np.ndarray:
  """Members of i's first k + 1 neighbours that have i among their first k + 1."""
  forward = rank[i, :k + 1]
  back = rank[forward, :k + 1]
  return forward[np.any(back == i, axis=1)]


def dense_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3, dtype=np.float64):
  q_g, q_q, g_g = (np.asarray(a) for a in (q_g, q_q, g_g))
  nq = q_g.shape[0]
  full = np.block([[q_q, q_g], [q_g.T, g_g]])
  sq = np.power(full, 2).astype(np.float32)
  o32 = (sq / sq.max(axis=0)).T  # O[i, j] = full[j, i]^2 / max_m full[m, i]^2
  o = o32.astype(dtype)
  n = o.shape[0]
  rank = np.argsort(o32, axis=1, kind="stable")
  half = int(np.around(k1 / 2.0))
  v = np.zeros((n, n), dtype)
  for i in range(n):
    r = reciprocal_set(rank, i, k1)
    expanded = [r]
    for c in r:
      rc = reciprocal_set(rank, c, half)
      common = len(np.intersect1d(rc, r))
      if common > 2.0 / 3 * len(rc):
        expanded.append(rc)
    members = np.unique(np.concatenate(expanded))
    w = np.exp(-o[i, members])
    v[i, members] = w / w.sum()
  if k2 != 1:
    v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
  # Jaccard distance of every query row to every row: sum_k min(V[i,k], V[j,k]).
  jac = np.empty((nq, n), dtype)
  for i in range(nq):
    common = np.minimum(v[i][None, :], v).sum(axis=1)
    jac[i] = 1.0 - common / (2.0 - common)
  final = jac * (1 - lambda_value) + o[:nq] * lambda_value
  return final[:, nq:]
