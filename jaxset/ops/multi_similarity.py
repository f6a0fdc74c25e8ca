"""Multi-similarity loss and miner (Wang et al., CVPR 2019, arXiv 1904.06627).

The loss of GSV-Cities, MixVPR, BoQ and SALAD over P x K place batches.
Similarities S_ik are dot products of L2-normalised descriptors (cosine).

Defaults are the paper's (its implementation details): alpha = 2,
beta = 50, lambda = 1, epsilon = 0.1. pytorch-metric-learning has the same
alpha, beta and epsilon but base (lambda) = 0.5; GSV-Cities trains with
alpha = 1, beta = 50, base = 0 (pass them to reproduce those).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxset.ops import _checks
from jaxset.ops._checks import compute_dtype as _compute_dtype

__all__ = ["multi_similarity_loss", "multi_similarity_miner", "label_pair_masks",
           "multi_similarity_from_labels"]

ALPHA, BETA, LAMBDA, EPSILON = 2.0, 50.0, 1.0, 0.1  # paper


def _log1p_sum_exp(x, mask):
  """log(1 + sum_{mask} exp(x)) along -1 (0 for an empty mask), stably."""
  lse = jax.nn.logsumexp(jnp.where(mask, x, -jnp.inf), axis=-1)
  return jnp.logaddexp(0.0, lse)


def _ms_parts(s, pos, neg, alpha, beta, lam):
  xp = -alpha * (s - lam)
  xn = beta * (s - lam)
  lp = _log1p_sum_exp(xp, pos)
  ln = _log1p_sum_exp(xn, neg)
  return xp, xn, lp, ln


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _ms_loss(s, pos, neg, alpha, beta, lam):
  _, _, lp, ln = _ms_parts(s, pos, neg, alpha, beta, lam)
  return lp / alpha + ln / beta


def _ms_loss_fwd(s, pos, neg, alpha, beta, lam):
  xp, xn, lp, ln = _ms_parts(s, pos, neg, alpha, beta, lam)
  # The paper's pair weights (its weighting step):
  #   w+_ij = 1 / (e^{alpha (S_ij - lam)} + sum_{k in P_i} e^{-alpha (S_ik - S_ij)})
  #         = e^{-alpha (S_ij - lam)} / (1 + sum_{k in P_i} e^{-alpha (S_ik - lam)}),
  #   w-_ij = 1 / (e^{beta (lam - S_ij)} + sum_{k in N_i} e^{beta (S_ik - S_ij)})
  #         = e^{beta (S_ij - lam)} / (1 + sum_{k in N_i} e^{beta (S_ik - lam)}).
  w_pos = jnp.where(pos, jnp.exp(xp - lp[..., None]), 0)
  w_neg = jnp.where(neg, jnp.exp(xn - ln[..., None]), 0)
  return lp / alpha + ln / beta, (w_pos, w_neg)


def _ms_loss_bwd(alpha, beta, lam, res, g):
  del alpha, beta, lam
  w_pos, w_neg = res
  # dL_i/dS_ij = -w+_ij on positive pairs, +w-_ij on negative pairs.
  ds = g[..., None] * (w_neg - w_pos)
  return ds, None, None


_ms_loss.defvjp(_ms_loss_fwd, _ms_loss_bwd)


def _check_pairs(similarity, pos_mask, neg_mask):
  _checks.check_rank("similarity", similarity, 2, "[B anchors, B' candidates]")
  _checks.check_shape("pos_mask", pos_mask, similarity.shape, "like similarity")
  _checks.check_shape("neg_mask", neg_mask, similarity.shape, "like similarity")
  _checks.check_float("similarity", similarity)
  _checks.check_finite("similarity", similarity)


def _check_weights(alpha, beta, lam):
  _checks.check_scalar_range("alpha", alpha, 0.0, math.inf,
                             "the positive pairs' temperature, e.g. 2", low_open=True)
  _checks.check_scalar_range("beta", beta, 0.0, math.inf,
                             "the negative pairs' temperature, e.g. 50", low_open=True)
  _checks.check_scalar_range("lam", lam, -math.inf, math.inf,
                             "a finite similarity margin, e.g. 1")


def multi_similarity_loss(similarity, pos_mask, neg_mask, *, alpha: float = ALPHA,
                          beta: float = BETA, lam: float = LAMBDA):
  """Per-anchor multi-similarity loss (Wang et al. 2019, the MS loss).

  L_i = 1/alpha log[1 + sum_{k in P_i} e^{-alpha (S_ik - lam)}]
      + 1/beta  log[1 + sum_{k in N_i} e^{ beta (S_ik - lam)}]

  Args:
    similarity: [..., B, B'] S_ik (cosine similarities of anchor i, candidate k).
    pos_mask, neg_mask: [..., B, B'] bool, the pairs P_i and N_i (e.g. from
      multi_similarity_miner, or label_pair_masks unmined).
    alpha, beta, lam: the paper's 2, 50, 1.

  Returns:
    [..., B] L_i in float32 at least. The paper's loss is their mean over the
    batch. An anchor with no positive pair gets 0 for the positive term, one
    with no negative pair 0 for the negative term (log 1); with neither it
    contributes 0 and no gradient. Computed with log-sum-exp (no overflow at
    beta = 50).

  Gradient (jax.custom_vjp), the paper's pair weights:
    dL_i/dS_ij = -w+_ij (j in P_i),
      w+_ij = e^{-alpha (S_ij - lam)} / (1 + sum_{P_i} e^{-alpha (S_ik - lam)})
    dL_i/dS_ij = +w-_ij (j in N_i),
      w-_ij = e^{ beta (S_ij - lam)} / (1 + sum_{N_i} e^{ beta (S_ik - lam)})
    and 0 for unmasked pairs.
  """
  _check_pairs(similarity, pos_mask, neg_mask)
  _check_weights(alpha, beta, lam)
  dtype = _compute_dtype(similarity)
  return _ms_loss(similarity.astype(dtype), jnp.asarray(pos_mask, bool),
                  jnp.asarray(neg_mask, bool), float(alpha), float(beta), float(lam))


def _check_label_vector(name, labels):
  labels = jnp.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{name} must have shape (batch,) (one int label per row); got "
                     f"{labels.shape}. Flatten it, e.g. {name}.reshape(-1).")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name} must be integers; got dtype {labels.dtype}.")
  return labels


def label_pair_masks(labels, ref_labels=None):
  """All positive / negative pairs of a labelled batch.

  labels [B] int (and ref_labels [B'], default labels) -> (pos [B, B'], neg [B, B'])
  bool: pos = same label, excluding i == k when ref_labels is None; neg =
  different label. Negative labels mark unlabelled rows: they take part in no pair.

  >>> pos, neg = label_pair_masks(jnp.array([0, 0, 1]))
  >>> pos.astype(int).tolist(), neg.astype(int).tolist()
  ([[0, 1, 0], [1, 0, 0], [0, 0, 0]], [[0, 0, 1], [0, 0, 1], [1, 1, 0]])
  """
  labels = _check_label_vector("labels", labels)
  self_pairs = ref_labels is None
  ref = labels if self_pairs else _check_label_vector("ref_labels", ref_labels)
  valid = (labels[:, None] >= 0) & (ref[None, :] >= 0)
  same = (labels[:, None] == ref[None, :]) & valid
  if self_pairs:
    same = same & ~jnp.eye(labels.shape[0], dtype=bool)
  return same, valid & (labels[:, None] != ref[None, :])


def multi_similarity_miner(similarity, pos_mask, neg_mask, *, epsilon: float = EPSILON):
  """The paper's pair mining step, as pytorch-metric-learning's MultiSimilarityMiner.

  A negative pair (i, j) is kept if S_ij > min_{k in P_i} S_ik - epsilon; a
  positive pair if S_ij < max_{k in N_i} S_ik + epsilon.

  similarity [..., B, B'], pos_mask / neg_mask [..., B, B'] bool (all pairs,
  label_pair_masks) -> (mined_pos, mined_neg) bool, subsets of the masks. An
  anchor with no positive keeps no negative, and one with no negative keeps no
  positive (min / max over an empty set are +inf / -inf), so under the loss
  it contributes 0. No gradient (boolean masks).
  """
  _check_pairs(similarity, pos_mask, neg_mask)
  _checks.check_scalar_range("epsilon", epsilon, 0.0, math.inf, "the mining margin, e.g. 0.1")
  s = jax.lax.stop_gradient(jnp.asarray(similarity))
  pos_mask, neg_mask = jnp.asarray(pos_mask, bool), jnp.asarray(neg_mask, bool)
  # initial: an empty batch (B' = 0) reduces to +-inf rather than failing.
  hardest_pos = jnp.min(jnp.where(pos_mask, s, jnp.inf), axis=-1, keepdims=True,
                        initial=jnp.inf)
  hardest_neg = jnp.max(jnp.where(neg_mask, s, -jnp.inf), axis=-1, keepdims=True,
                        initial=-jnp.inf)
  return pos_mask & (s < hardest_neg + epsilon), neg_mask & (s > hardest_pos - epsilon)


def multi_similarity_from_labels(embeddings, labels, *, mine: bool = True,
                                 alpha: float = ALPHA, beta: float = BETA, lam: float = LAMBDA,
                                 epsilon: float = EPSILON):
  """Multi-similarity loss of a labelled batch: S = E E^T, mined pairs, [B] losses.

  embeddings [B, D] (L2-normalised, so S is cosine), labels [B] int (-1:
  unlabelled, in no pair); mine=False uses all pairs. Returns [B] L_i (see
  multi_similarity_loss); the paper's loss is their mean. The gradient to the
  embeddings flows through S by autodiff of the matmul.
  """
  _checks.check_rank("embeddings", embeddings, 2, "[B, D]")
  _checks.check_float("embeddings", embeddings)
  _checks.check_finite("embeddings", embeddings)
  _checks.check_shape("labels", labels, embeddings.shape[:1], "one label per embedding")
  e = embeddings.astype(_compute_dtype(embeddings))
  s = e @ e.T
  pos, neg = label_pair_masks(labels)
  if mine:
    pos, neg = multi_similarity_miner(s, pos, neg, epsilon=epsilon)
  return multi_similarity_loss(s, pos, neg, alpha=alpha, beta=beta, lam=lam)
