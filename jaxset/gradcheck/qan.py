"""QAN gradient checks: quality pooling (eq. (2), (5)-(8)) and the set losses.

Each case pairs a jaxset op with a plain-jnp reference forward (no custom_vjp)
and the paper's gradient equations written out in numpy, independently of the
op's backward. QAN's eq. (5)-(6) omit the 1/sum_j mu_j factor (they assume
normalised mu); the exact form with the factor is written here.

NetVLAD's weakly supervised ranking loss lives in jaxset/ops/losses.py next to
QAN's triplet loss, so its case is registered here too.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxset.gradcheck import GradCase
from jaxset.ops import losses, pooling

# --------------------------------------------------------------------------
# Plain references (autodiff, no custom_vjp).


def reference_quality_pool(features, quality, mask=None):
  """Eq. (2) for non-degenerate sets: sum_i mu_i R_i / sum_i mu_i."""
  mu = quality if mask is None else jnp.where(mask, quality, 0)
  return jnp.sum(mu[..., None] * features, axis=-2) / jnp.sum(mu, axis=-1)[..., None]


def reference_segment_quality_pool(features, quality, segment_ids, num_segments):
  num = jax.ops.segment_sum(quality[:, None] * features, segment_ids, num_segments)
  den = jax.ops.segment_sum(quality, segment_ids, num_segments)
  return num / den[:, None]


def reference_set_triplet(anchor, positive, negative, margin=1.2):
  d_ap = jnp.sum((anchor - positive) ** 2, -1)
  d_an = jnp.sum((anchor - negative) ** 2, -1)
  return jnp.maximum(d_ap - d_an + margin, 0)


def reference_ranking(query, positives, negatives, pos_mask, neg_mask, margin=0.1,
                      squared=True):
  def dist(x):
    sq = jnp.sum((query[:, None] - x) ** 2, -1)
    return sq if squared else jnp.sqrt(sq)
  d_pos, d_neg = dist(positives), dist(negatives)
  best = jnp.argmin(jnp.where(pos_mask, d_pos, jnp.inf), -1)
  d_best = jnp.take_along_axis(d_pos, best[:, None], -1)
  hinge = jnp.maximum(d_best + margin - d_neg, 0)
  loss = jnp.sum(jnp.where(neg_mask, hinge, 0), -1)
  return jnp.where(jnp.any(pos_mask, -1), loss, 0)


# --------------------------------------------------------------------------
# The papers' gradients, written out with numpy loops.


def paper_grad_quality_pool(args, fixed, cotangent):
  """QAN eq. (7) and (8) in exact form, for every set of the batch.

  dL/dR_i = dL/dR_a * mu_i / sum_j mu_j
  dL/dmu_i = sum_d dL/dR_a[d] (x_i[d] - R_a[d]) / sum_j mu_j
  """
  x, mu = (np.asarray(a) for a in args)
  mask = np.ones(mu.shape, bool) if fixed.get("mask") is None else np.asarray(fixed["mask"])
  g = np.asarray(cotangent)
  dx, dmu = np.zeros_like(x), np.zeros_like(mu)
  for b in np.ndindex(mu.shape[:-1]):
    m = np.where(mask[b], mu[b], 0.0)
    total = m.sum()
    r_a = sum(m[i] * x[b][i] for i in range(len(m))) / total
    for i in range(len(m)):
      if not mask[b][i]:
        continue
      dx[b][i] = g[b] * m[i] / total                                    # eq. (5), (7)
      # eq. (6), (8)
      dmu[b][i] = sum(g[b][d] * (x[b][i][d] - r_a[d]) for d in range(len(r_a))) / total
  return dx, dmu


def paper_grad_segment_quality_pool(args, fixed, cotangent):
  """Eq. (7)-(8) applied to each segment of a ragged batch."""
  x, mu = (np.asarray(a) for a in args)
  ids = np.asarray(fixed["segment_ids"])
  g = np.asarray(cotangent)
  dx, dmu = np.zeros_like(x), np.zeros_like(mu)
  for k in range(fixed["num_segments"]):
    rows = np.flatnonzero(ids == k)
    if rows.size == 0:
      continue
    total = mu[rows].sum()
    r_a = (mu[rows, None] * x[rows]).sum(0) / total
    for i in rows:
      dx[i] = g[k] * mu[i] / total
      dmu[i] = np.dot(g[k], x[i] - r_a) / total
  return dx, dmu


def paper_grad_set_triplet(args, fixed, cotangent):
  """L = max(0, |a-p|^2 - |a-n|^2 + delta): where active,
  dL/da = 2(a-p) - 2(a-n), dL/dp = -2(a-p), dL/dn = 2(a-n)."""
  a, p, n = (np.asarray(v) for v in args)
  margin = fixed.get("margin", 1.2)
  g = np.asarray(cotangent)
  da, dp, dn = np.zeros_like(a), np.zeros_like(p), np.zeros_like(n)
  for b in np.ndindex(a.shape[:-1]):
    h = np.sum((a[b] - p[b]) ** 2) - np.sum((a[b] - n[b]) ** 2) + margin
    if h > 0:
      da[b] = g[b] * (2 * (a[b] - p[b]) - 2 * (a[b] - n[b]))
      dp[b] = g[b] * (-2 * (a[b] - p[b]))
      dn[b] = g[b] * (2 * (a[b] - n[b]))
  return da, dp, dn


def paper_grad_ranking(args, fixed, cotangent):
  """NetVLAD L = sum_n max(d(q,p*) + m - d(q,n), 0), differentiated term by term.

  For each violating valid negative n: d(q,p*) contributes +dd/dq to q and
  -dd/dq to p*, and -d(q,n) contributes -dd/dq to q and +dd/dq to n, with
  dd(q,x)/dq = 2(q-x) (squared) or (q-x)/|q-x| (plain).
  """
  q, pos, neg = (np.asarray(v) for v in args)
  pm, nm = np.asarray(fixed["pos_mask"]), np.asarray(fixed["neg_mask"])
  margin, squared = fixed.get("margin", 0.1), fixed.get("squared", True)
  g = np.asarray(cotangent)

  def d_and_dq(qq, x):
    diff = qq - x
    sq = float(np.dot(diff, diff))
    return (sq, 2 * diff) if squared else (np.sqrt(sq), diff / np.sqrt(sq))

  dq, dpos, dneg = np.zeros_like(q), np.zeros_like(pos), np.zeros_like(neg)
  for b in range(q.shape[0]):
    valid = [j for j in range(pos.shape[1]) if pm[b, j]]
    if not valid:
      continue
    star = min(valid, key=lambda j: d_and_dq(q[b], pos[b, j])[0])
    d_star, j_star = d_and_dq(q[b], pos[b, star])
    for n in range(neg.shape[1]):
      d_n, j_n = d_and_dq(q[b], neg[b, n])
      if nm[b, n] and d_star + margin - d_n > 0:
        dq[b] += g[b] * (j_star - j_n)
        dpos[b, star] += -g[b] * j_star
        dneg[b, n] += g[b] * j_n
  return dq, dpos, dneg


# --------------------------------------------------------------------------
# Inputs.


def _make_quality_pool(shape, masked):
  def make(rng):
    *batch, n, d = shape
    x = rng.standard_normal(shape)
    mu = rng.uniform(0.1, 1.0, (*batch, n))
    fixed = {}
    if masked:
      mask = rng.uniform(size=(*batch, n)) < 0.7
      mask[..., 0] = True  # every set keeps at least one element
      fixed["mask"] = mask
    return (x, mu), fixed
  return make


def _make_segment(rng):
  ids = np.array([0, 0, 2, 1, 2, 1])  # interleaved, unsorted
  x = rng.standard_normal((ids.size, 2))
  mu = rng.uniform(0.1, 1.0, ids.size)
  return (x, mu), {"segment_ids": ids, "num_segments": 3}


def _make_triplet(rng):
  # Resample until no hinge sits within 1e-3 of its kink (finite differences).
  while True:
    a, p, n = (rng.standard_normal((5, 4)) * 0.6 for _ in range(3))
    h = ((a - p) ** 2).sum(-1) - ((a - n) ** 2).sum(-1) + 1.2
    if np.all(np.abs(h) > 1e-3) and (h > 0).any() and (h <= 0).any():
      return (a, p, n), {"margin": 1.2}


def _make_ranking(squared):
  def make(rng):
    b, p, m, d = 3, 3, 4, 4
    margin = 2.0 if squared else 0.8
    pm = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0]], bool)  # last query: no positive
    nm = np.array([[1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 1]], bool)
    while True:
      q, pos, neg = rng.standard_normal((b, d)), rng.standard_normal((b, p, d)), \
          rng.standard_normal((b, m, d))
      dist = lambda x: np.sum((q[:, None] - x) ** 2, -1) ** (1.0 if squared else 0.5)
      dp, dn = dist(pos), dist(neg)
      dp_valid = np.where(pm, dp, np.inf)
      best = np.sort(dp_valid, -1)
      no_tie = np.all((best[:2, 1] - best[:2, 0]) > 1e-3)
      viol = np.min(dp_valid[:2], -1, keepdims=True) + margin - dn[:2]
      if no_tie and np.all(np.abs(viol) > 1e-3) and (viol > 0).any() and (viol < 0).any():
        fixed = {"pos_mask": pm, "neg_mask": nm, "margin": margin, "squared": squared}
        return (q, pos, neg), fixed
  return make


def cases() -> list[GradCase]:
  return [
      GradCase(name="quality_pool", fn=pooling.quality_pool,
               reference=reference_quality_pool, paper_grad=paper_grad_quality_pool,
               make=_make_quality_pool((2, 4, 2), masked=False), order=2,
               paper_eq="QAN eq.(7)-(8) exact (x 1/sum mu)"),
      GradCase(name="quality_pool/masked", fn=pooling.quality_pool,
               reference=reference_quality_pool, paper_grad=paper_grad_quality_pool,
               make=_make_quality_pool((2, 2, 3, 2), masked=True), order=2,
               paper_eq="QAN eq.(7)-(8) exact (x 1/sum mu)"),
      GradCase(name="segment_quality_pool", fn=pooling.segment_quality_pool,
               reference=reference_segment_quality_pool,
               paper_grad=paper_grad_segment_quality_pool, make=_make_segment, order=2,
               paper_eq="QAN eq.(7)-(8) per segment"),
      GradCase(name="set_triplet_loss", fn=losses.set_triplet_loss,
               reference=reference_set_triplet, paper_grad=paper_grad_set_triplet,
               make=_make_triplet, order=2, paper_eq="QAN L_veri hinge derivative"),
      GradCase(name="ranking_loss/squared",
               fn=losses.weakly_supervised_ranking_loss, reference=reference_ranking,
               paper_grad=paper_grad_ranking, make=_make_ranking(True), order=2,
               paper_eq="NetVLAD eq.(7) hinge derivative"),
      GradCase(name="ranking_loss/plain",
               fn=losses.weakly_supervised_ranking_loss, reference=reference_ranking,
               paper_grad=paper_grad_ranking, make=_make_ranking(False), order=2,
               paper_eq="NetVLAD hinge, non-squared d"),
  ]
