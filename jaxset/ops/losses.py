"""Set-level and pair-level losses: QAN triplet, NetVLAD ranking, CASN Siamese.

Every loss returns one value per example (shape [...] or [B]); the caller
reduces (mean, sum, or the official codes' 1/(2N) scale). Each has a
jax.custom_vjp whose backward is the derivative written out in its
docstring; jaxset/gradcheck checks them against autodiff, finite differences
and the papers. Plain softmax cross-entropy is not here: use
optax.softmax_cross_entropy_with_integer_labels.

Arithmetic runs in float32 at least (bfloat16/float16 inputs are accumulated
in float32). The distance-based losses (set_triplet_loss,
weakly_supervised_ranking_loss, attention_consistency_loss) return float32
at least: a squared distance of unnormalised float16 descriptors passes the
float16 maximum (65504) easily, and casting it back would give Inf. Their
gradients come back in each input's dtype; verification_bce returns
logits.dtype (its loss is bounded by |z| + log 2). Called eagerly, NaN/Inf
inputs raise ValueError; under jit they propagate (the loop's NaN guard
stops the run).

References: QAN (Liu et al., CVPR 2017, arXiv 1704.03373) for the set triplet
loss; NetVLAD (Arandjelovic et al., CVPR 2016, arXiv 1511.07247) for the weakly
supervised ranking loss; CASN (Zheng et al., CVPR 2019, arXiv 1811.07487) for
the verification BCE and the attention consistency loss. docs/conventions.md.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxset.ops import _checks

__all__ = [
    "set_triplet_loss", "weakly_supervised_ranking_loss", "verification_bce",
    "attention_consistency_loss",
]




def _check_all_finite(**arrays):
  for name, x in arrays.items():
    _checks.check_float(name, x)
    _checks.check_finite(name, x)


# --------------------------------------------------------------------------
# QAN set triplet loss.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _set_triplet(anchor, positive, negative, margin):
  return _set_triplet_fwd(anchor, positive, negative, margin)[0]


def _set_triplet_fwd(anchor, positive, negative, margin):
  dtype = _checks.compute_dtype(anchor, positive, negative)
  a, p, n = (x.astype(dtype) for x in (anchor, positive, negative))
  hinge = jnp.sum((a - p) ** 2, -1) - jnp.sum((a - n) ** 2, -1) + margin
  loss = jnp.maximum(hinge, 0)
  return loss, (a, p, n, hinge > 0, _checks.dtype_tag(anchor), _checks.dtype_tag(positive),
                _checks.dtype_tag(negative))


def _set_triplet_bwd(margin, res, g):
  del margin
  a, p, n, active, ta, tp, tn = res
  g = jnp.where(active, g.astype(a.dtype), 0)[..., None]
  d_anchor = 2 * g * (n - p)
  d_positive = -2 * g * (a - p)
  d_negative = 2 * g * (a - n)
  return d_anchor.astype(ta.dtype), d_positive.astype(tp.dtype), d_negative.astype(tn.dtype)


_set_triplet.defvjp(_set_triplet_fwd, _set_triplet_bwd)


def set_triplet_loss(anchor, positive, negative, margin: float = 1.2):
  """QAN's set verification loss (Sec. 3.2): max(0, |a-p|^2 - |a-n|^2 + delta).

  Args:
    anchor, positive, negative: [..., D] set representations R_a(S_a),
      R_a(S_p), R_a(S_n) (QAN pools, then L2-normalises them).
    margin: delta, a Python float. The paper gives no value; 1.2 is the
      official Caffe code's m.

  Returns:
    [...] per-triplet loss (the paper's per-example form), float32 at least. The official code
    averages as (1/2N) sum over the batch: `0.5 * jnp.mean(loss)`.

  Gradient (jax.custom_vjp), with h = |a-p|^2 - |a-n|^2 + delta and
  1[h > 0] the active indicator (at h == 0 exactly the subgradient 0 is used):
    dL/da = 2 (n - p) 1[h>0], dL/dp = -2 (a - p) 1[h>0], dL/dn = 2 (a - n) 1[h>0].
  """
  anchor, positive, negative = (jnp.asarray(x) for x in (anchor, positive, negative))
  _checks.check_rank("anchor", anchor, 1, "[..., dim]")
  shape = anchor.shape
  _checks.check_shape("positive", positive, shape, "same shape as anchor")
  _checks.check_shape("negative", negative, shape, "same shape as anchor")
  _check_all_finite(anchor=anchor, positive=positive, negative=negative)
  return _set_triplet(anchor, positive, negative, float(margin))


# --------------------------------------------------------------------------
# NetVLAD weakly supervised ranking loss.


def _pair_distance(q, x, squared):
  """d(q, x) over the last axis and the Jacobian factor dd/dq (= -dd/dx)."""
  diff = q - x
  sq = jnp.sum(diff ** 2, -1)
  if squared:
    return sq, 2 * diff
  dist = jnp.sqrt(sq)
  # The plain distance has no derivative at 0; use the subgradient 0 there.
  safe = jnp.where(dist > 0, dist, 1)
  return dist, jnp.where((dist > 0)[..., None], diff / safe[..., None], 0)


def _ranking_terms(query, positives, negatives, pos_mask, neg_mask, margin, squared):
  dtype = _checks.compute_dtype(query, positives, negatives)
  q = query.astype(dtype)
  pos = jnp.where(pos_mask[..., None], positives.astype(dtype), 0)
  neg = jnp.where(neg_mask[..., None], negatives.astype(dtype), 0)
  d_pos, j_pos = _pair_distance(q[:, None], pos, squared)
  d_neg, j_neg = _pair_distance(q[:, None], neg, squared)
  best = jnp.argmin(jnp.where(pos_mask, d_pos, jnp.inf), axis=-1)
  has_pos = jnp.any(pos_mask, axis=-1)
  d_best = jnp.take_along_axis(d_pos, best[:, None], axis=-1)[:, 0]
  j_best = jnp.take_along_axis(j_pos, best[:, None, None], axis=1)[:, 0]
  violation = d_best[:, None] + margin - d_neg
  active = neg_mask & (violation > 0) & has_pos[:, None]
  loss = jnp.sum(jnp.where(active, violation, 0), axis=-1)
  return loss, (best, j_best, j_neg, active)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _ranking(query, positives, negatives, pos_mask, neg_mask, margin, squared):
  return _ranking_fwd(query, positives, negatives, pos_mask, neg_mask, margin, squared)[0]


def _ranking_fwd(query, positives, negatives, pos_mask, neg_mask, margin, squared):
  loss, (best, j_best, j_neg, active) = _ranking_terms(
      query, positives, negatives, pos_mask, neg_mask, margin, squared)
  best_onehot = jax.nn.one_hot(best, positives.shape[1], dtype=j_best.dtype)
  res = (best_onehot, j_best, j_neg, active, _checks.dtype_tag(query),
         _checks.dtype_tag(positives), _checks.dtype_tag(negatives))
  return loss, res


def _ranking_bwd(margin, squared, res, g):
  del margin, squared
  best_onehot, j_best, j_neg, active, tq, tp, tn = res
  g = g.astype(j_best.dtype)
  act = active.astype(j_best.dtype)
  num_active = jnp.sum(act, axis=-1)
  # L = sum_n 1[active_n] (d(q,p*) + m - d(q,n)); dd(q,x)/dq = J(q,x) = -dd(q,x)/dx.
  d_query = (g * num_active)[:, None] * j_best - jnp.einsum("bm,bmd->bd", g[:, None] * act, j_neg)
  d_best = -(g * num_active)[:, None] * j_best
  d_positives = best_onehot[..., None] * d_best[:, None]
  d_negatives = (g[:, None] * act)[..., None] * j_neg
  return (d_query.astype(tq.dtype), d_positives.astype(tp.dtype),
          d_negatives.astype(tn.dtype), None, None)


_ranking.defvjp(_ranking_fwd, _ranking_bwd)


def weakly_supervised_ranking_loss(query, positives, negatives, pos_mask=None,
                                   neg_mask=None, margin: float = 0.1,
                                   squared: bool = True):
  """NetVLAD's weakly supervised triplet ranking loss (Arandjelovic et al., eq. (7)).

  L_q = sum_{valid n} max(d(q, p*) + m - d(q, n), 0), where
  p* = argmin_{valid p} d(q, p) is the best potential positive.

  Args:
    query: [B, D] query descriptors.
    positives: [B, P, D] potential positives of each query.
    negatives: [B, M, D] (hard) negatives of each query.
    pos_mask, neg_mask: optional [B, P] / [B, M] bool, True = valid entry.
    margin: m, a Python float (paper: 0.1 with squared distances).
    squared: True (paper and MATLAB code): d is the squared Euclidean
      distance. False: the plain Euclidean distance of the PyTorch ports
      (which use margin 0.1 or sqrt(0.1)).

  Returns:
    [B] per-query loss (sum over negatives; the caller averages queries),
    float32 at least (distances are computed in float32: no float16 overflow).
    A query with no valid positive (or P == 0) has loss 0 and gradient 0.

  Gradient (jax.custom_vjp), with A the set of active negatives
  (valid and d(q,p*) + m - d(q,n) > 0) and J(q,x) = dd(q,x)/dq, which is
  2(q - x) squared or (q - x)/|q - x| plain (0 at q == x):
    dL/dq = |A| J(q,p*) - sum_{n in A} J(q,n),
    dL/dp* = -|A| J(q,p*), dL/dp = 0 for the other positives,
    dL/dn = J(q,n) for n in A, 0 otherwise.
  Ties in the argmin take the first positive; a violation exactly 0 counts
  as inactive.
  """
  query, positives, negatives = (jnp.asarray(x) for x in (query, positives, negatives))
  _checks.check_shape("query", query, (None, None), "[batch, dim]")
  b, d = query.shape
  _checks.check_shape("positives", positives, (b, None, d), "[batch, positives, dim]")
  _checks.check_shape("negatives", negatives, (b, None, d), "[batch, negatives, dim]")
  p, m = positives.shape[1], negatives.shape[1]
  _checks.check_binary("pos_mask", pos_mask)
  _checks.check_binary("neg_mask", neg_mask)
  pos_mask = jnp.ones((b, p), bool) if pos_mask is None else jnp.asarray(pos_mask, bool)
  neg_mask = jnp.ones((b, m), bool) if neg_mask is None else jnp.asarray(neg_mask, bool)
  _checks.check_shape("pos_mask", pos_mask, (b, p), "one bool per positive")
  _checks.check_shape("neg_mask", neg_mask, (b, m), "one bool per negative")
  if _checks.is_concrete(query, positives, negatives, pos_mask, neg_mask):
    _check_all_finite(query=query,
                      positives=jnp.where(pos_mask[..., None], positives, 0),
                      negatives=jnp.where(neg_mask[..., None], negatives, 0))
  out_dtype = _checks.compute_dtype(query, positives, negatives)
  if p == 0 or m == 0:
    # No positive or no negative anywhere: every loss is 0; keep the graph
    # connected so that gradients are (zero) arrays of the right shapes.
    return (0 * jnp.sum(query, -1)).astype(out_dtype)
  return _ranking(query, positives, negatives, pos_mask, neg_mask, float(margin),
                  bool(squared))


# --------------------------------------------------------------------------
# CASN Siamese verification: binary cross-entropy on logits.


@jax.custom_vjp
def _bce(logits, same):
  return _bce_fwd(logits, same)[0]


def _bce_fwd(logits, same):
  z = logits.astype(_checks.compute_dtype(logits))
  y = same.astype(z.dtype)
  # softplus(z) - y z, written to never overflow.
  loss = jnp.maximum(z, 0) - y * z + jnp.log1p(jnp.exp(-jnp.abs(z)))
  return loss.astype(logits.dtype), (z, y, _checks.dtype_tag(logits), _checks.dtype_tag(same))


def _bce_bwd(res, g):
  z, y, tz, ty = res
  g = g.astype(z.dtype)
  return (g * (jax.nn.sigmoid(z) - y)).astype(tz.dtype), (-g * z).astype(ty.dtype)


_bce.defvjp(_bce_fwd, _bce_bwd)


def verification_bce(logits, same):
  """CASN's Siamese same/different loss: binary cross-entropy on logits.

  L = -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))] = softplus(z) - y z,
  computed as max(z, 0) - y z + log1p(exp(-|z|)) so it is finite for any
  finite z.

  Args:
    logits: [...] pre-sigmoid scores z of "same identity".
    same: [...] 0/1 (bool, int or float) labels y; 1 = same identity.

  Returns:
    [...] per-pair loss in logits.dtype.

  Gradient (jax.custom_vjp): dL/dz = sigmoid(z) - y; dL/dy = -z (only seen
  when `same` is a float array being differentiated).
  """
  logits = jnp.asarray(logits)
  same = jnp.asarray(same)
  _checks.check_shape("same", same, logits.shape, "one label per logit")
  _check_all_finite(logits=logits)
  _checks.check_binary("same", same)
  if not jnp.issubdtype(same.dtype, jnp.floating):
    same = same.astype(_checks.compute_dtype(logits))
  return _bce(logits, same)


# --------------------------------------------------------------------------
# CASN Siamese attention consistency.


def _profile(maps, threshold):
  """Horizontal max pool [B, H, W] -> [B, H], then the relative threshold.

  The threshold is relative to the profile's span above its floor
  min(0, min_h profile): 0 for non-negative (ReLU) maps, the minimum for
  signed ones, whose maximum may be negative. Dropped rows take the floor.
  """
  profile = jnp.max(maps, axis=-1)
  floor = jax.lax.stop_gradient(jnp.minimum(jnp.min(profile, axis=-1, keepdims=True), 0))
  peak = jnp.max(profile, axis=-1, keepdims=True)
  keep = profile - floor >= threshold * (peak - floor)
  return jnp.where(keep, profile, floor), keep


def _resize(profile, size):
  if size == profile.shape[-1]:
    return profile
  return jax.image.resize(profile, (profile.shape[0], size), method="linear")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _consistency(map_a, map_b, same, threshold, size):
  return _consistency_fwd(map_a, map_b, same, threshold, size)[0]


def _consistency_fwd(map_a, map_b, same, threshold, size):
  dtype = _checks.compute_dtype(map_a, map_b)
  a, b = map_a.astype(dtype), map_b.astype(dtype)
  pa, keep_a = _profile(a, threshold)
  pb, keep_b = _profile(b, threshold)
  diff = _resize(pa, size) - _resize(pb, size)
  sq = jnp.sum(diff ** 2, axis=-1)
  y = same.astype(dtype)
  loss = y * sq
  res = (a, b, pa, keep_a, keep_b, diff, y, sq, _checks.dtype_tag(map_a), _checks.dtype_tag(map_b),
         _checks.dtype_tag(same))
  return loss, res


def _consistency_bwd(threshold, size, res, g):
  del threshold
  a, b, pa, keep_a, keep_b, diff, y, sq, ta, tb, ts = res
  g = g.astype(a.dtype)
  # R^T, the transpose of the (linear) resize, applied to 2 y g (R pa - R pb).
  _, resize_t = jax.vjp(lambda p: _resize(p, size), pa)
  (d_profile,) = resize_t((2 * y * g)[:, None] * diff)

  def to_map(maps, keep, d_prof):
    # Through the threshold (piecewise constant) and the max over W, which
    # routes the gradient to the row's arg-max, split evenly on exact ties.
    winners = (maps == jnp.max(maps, axis=-1, keepdims=True)).astype(maps.dtype)
    winners = winners / jnp.sum(winners, axis=-1, keepdims=True)
    return jnp.where(keep, d_prof, 0)[..., None] * winners

  d_a = to_map(a, keep_a, d_profile)
  d_b = to_map(b, keep_b, -d_profile)
  return d_a.astype(ta.dtype), d_b.astype(tb.dtype), (g * sq).astype(ts.dtype)


_consistency.defvjp(_consistency_fwd, _consistency_bwd)


def attention_consistency_loss(map_a, map_b, same, *, threshold: float = 0.5,
                               size: int | None = None):
  """CASN's Siamese attention consistency loss (Zheng et al. 2019, Sec. 3.2).

  M_m = T(maxpool_W(M)): each attention map is max-pooled horizontally into a
  vertical profile, values below `threshold` times the profile's own maximum
  are zeroed (the threshold is RELATIVE to the per-map max, so it does not
  depend on the Grad-CAM scale; threshold=0 keeps everything), and the
  profile is linearly resized to `size`. Signed maps (grad_cam(relu=False)
  without normalisation) are measured from their floor f = min(0, min_h
  profile) instead of 0: rows with profile - f < threshold * (max - f) are
  set to f (for non-negative maps f = 0: the rule above). A max-relative
  threshold would drop every row of an all-negative profile. The loss is
  ||R(M_m1) - R(M_m2)||^2 for a positive pair and 0 for a negative pair.

  Args:
    map_a, map_b: [B, H, W] attention maps of the two images of each pair
      (Grad-CAM maps, >= 0; see jaxset.ops.attention).
    same: [B] 0/1 labels (bool, int or float); 1 = same identity.
    threshold: relative threshold in [0, 1] (Python float).
    size: length of the resized profile; None keeps H.

  Returns:
    [B] per-pair loss, float32 at least.

  Gradient (jax.custom_vjp), with R the resize (a linear map), k the kept
  rows (piecewise constant, so no gradient through the threshold) and
  w* the row's arg-max column:
    dL/dM1[h, w] = 2 y k1[h] (R^T (R M_m1 - R M_m2))[h] 1[w = w*(h)],
    dL/dM2[h, w] = -2 y k2[h] (R^T (R M_m1 - R M_m2))[h] 1[w = w*(h)],
  exact ties at the row max split the gradient evenly (as jnp.max does).
  It is differentiable again, so CASN trains through Grad-CAM (gradients of
  gradients). All-zero maps give a zero profile and finite gradients.
  """
  map_a, map_b, same = (jnp.asarray(x) for x in (map_a, map_b, same))
  _checks.check_shape("map_a", map_a, (None, None, None), "[batch, height, width]")
  _checks.check_shape("map_b", map_b, map_a.shape, "same shape as map_a")
  _checks.check_shape("same", same, map_a.shape[:1], "one label per pair")
  if map_a.shape[2] == 0 or map_a.shape[1] == 0:
    raise ValueError(f"map_a must have non-empty height and width; got {map_a.shape}.")
  size = map_a.shape[1] if size is None else int(size)
  if size < 1:
    raise ValueError(f"size must be a positive length (or None to keep H); got {size}.")
  _check_all_finite(map_a=map_a, map_b=map_b)
  _checks.check_binary("same", same)
  _checks.check_scalar_range("threshold", threshold, 0.0, 1.0,
                             "relative to each profile's span; 0 keeps every row")
  if not jnp.issubdtype(same.dtype, jnp.floating):
    same = same.astype(_checks.compute_dtype(map_a, map_b))
  return _consistency(map_a, map_b, same, float(threshold), size)
