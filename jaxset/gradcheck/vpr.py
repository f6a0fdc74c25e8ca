"""Gradient checks of the later place-recognition ops: SALAD's dustbin Sinkhorn
(arXiv 2311.15937) and the multi-similarity loss (arXiv 1904.06627).

SALAD's paper gives no gradient: its backward is exact for the unrolled
iterations, so the reference is the same iterations in plain jnp (autodiff).
The MS loss's paper gradient is its pair weights w+ and w-, written out here
in their original form (not the rearranged one the op uses).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxset.gradcheck import GradCase
from jaxset.ops import multi_similarity, salad


def reference_salad_log_transport(scores, dustbin, num_iters=3):
  n, m = scores.shape[-2:]
  z = jnp.concatenate([scores, jnp.broadcast_to(dustbin, scores.shape[:-1] + (1,))], -1)
  log_b = jnp.full((n,), -jnp.log(n + m))
  log_a = jnp.append(jnp.full((m,), -jnp.log(n + m)), jnp.log(n - m) - jnp.log(n + m))
  v = jnp.zeros(scores.shape[:-1])
  for _ in range(num_iters):
    u = log_a - jnp.log(jnp.sum(jnp.exp(z + v[..., :, None]), axis=-2))
    v = log_b - jnp.log(jnp.sum(jnp.exp(z + u[..., None, :]), axis=-1))
  return z + u[..., None, :] + v[..., :, None] + jnp.log(n + m)


def reference_ms_loss(similarity, pos_mask, neg_mask, alpha=2.0, beta=50.0, lam=1.0):
  lp = jnp.log1p(jnp.sum(jnp.where(pos_mask, jnp.exp(-alpha * (similarity - lam)), 0), -1))
  ln = jnp.log1p(jnp.sum(jnp.where(neg_mask, jnp.exp(beta * (similarity - lam)), 0), -1))
  return lp / alpha + ln / beta


def paper_grad_ms_loss(args, fixed, cotangent):
  """dL/dS_ij = -w+_ij (positives), +w-_ij (negatives), Wang et al. 2019."""
  s = np.asarray(args[0], np.float64)
  pos, neg = np.asarray(fixed["pos_mask"]), np.asarray(fixed["neg_mask"])
  a, b, lam = fixed["alpha"], fixed["beta"], fixed["lam"]
  g = np.zeros_like(s)
  for i in range(s.shape[0]):
    P, N = np.flatnonzero(pos[i]), np.flatnonzero(neg[i])
    for j in P:
      w = 1 / (np.exp(a * (s[i, j] - lam)) + sum(np.exp(-a * (s[i, k] - s[i, j])) for k in P))
      g[i, j] = -w * float(cotangent[i])
    for j in N:
      w = 1 / (np.exp(b * (lam - s[i, j])) + sum(np.exp(b * (s[i, k] - s[i, j])) for k in N))
      g[i, j] = w * float(cotangent[i])
  return (g,)


def _make_salad(rng):
  return (rng.normal(size=(1, 4, 2)), np.asarray(0.5)), {"num_iters": 3}


def _make_ms(rng):
  labels = np.repeat(np.arange(2), 2)
  e = rng.normal(size=(4, 3)) + 1.5 * rng.normal(size=(2, 3))[labels]
  e /= np.linalg.norm(e, axis=1, keepdims=True)
  pos = (labels[:, None] == labels[None, :]) & ~np.eye(4, dtype=bool)
  return (e @ e.T,), {"pos_mask": pos, "neg_mask": labels[:, None] != labels[None, :],
                      "alpha": 2.0, "beta": 10.0, "lam": 0.5}


def cases() -> list[GradCase]:
  return [
      GradCase("salad_log_transport", salad.salad_log_transport,
               reference_salad_log_transport, None, _make_salad,
               paper_eq="3 unrolled log-Sinkhorn iterations"),
      GradCase("multi_similarity_loss", multi_similarity.multi_similarity_loss,
               reference_ms_loss, paper_grad_ms_loss, _make_ms,
               paper_eq="MS loss pair weights w+ / w-"),
  ]
