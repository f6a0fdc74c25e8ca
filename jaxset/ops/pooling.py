"""Set pooling: QAN's quality-weighted average and the usual baselines.

Conventions shared by every function here:

* The set axis is -2: features are [..., N, D] (any leading batch dims), one
  D-vector per set element; the pooled result is [..., D].
* `mask` [..., N] bool marks the valid elements of padded sets (True = keep).
  Masked entries never reach the result nor receive gradient, even if they
  hold NaN (they are replaced before any arithmetic).
* Arithmetic runs in float32 at least (bfloat16 inputs are accumulated in
  float32) and the result is cast back to the features' dtype.
* An empty set (N == 0, or every element masked) pools to zeros, with zero
  gradient; nothing returns NaN. The same masked-padding and empty-set
  convention holds in jaxset.ops.netvlad_layer and the losses.
* Called eagerly, NaN/Inf in the valid entries raise ValueError (see
  jaxset/ops/_checks.py); under jit/vmap/pmap they propagate to the output,
  where the training loop's NaN guard stops the run.

References: QAN (Liu et al., CVPR 2017, arXiv 1704.03373) for quality pooling;
GeM (Radenovic et al., TPAMI 2018, arXiv 1711.02512) for gem_pool.
docs/conventions.md, QAN.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxset.ops import _checks

__all__ = [
    "quality_pool", "segment_quality_pool", "mean_pool", "max_pool", "gem_pool",
]




def _check_set(features, mask, quality=None):
  """Shape checks shared by the padded-set pools; returns the valid mask."""
  _checks.check_rank("features", features, 2, "[..., set, dim]")
  _checks.check_float("features", features)
  set_shape = tuple(features.shape[:-1])
  if quality is not None:
    _checks.check_shape("quality", quality, set_shape,
                        "one score per set element: features.shape[:-1]")
    _checks.check_float("quality", quality)
  if mask is None:
    return jnp.ones(set_shape, bool)
  _checks.check_shape("mask", mask, set_shape,
                      "one bool per set element: features.shape[:-1]")
  _checks.check_binary("mask", mask)
  return jnp.asarray(mask, bool)


def _check_values(valid, features, quality=None):
  """Eager NaN and sign checks on the valid entries only (padding may hold anything)."""
  if not _checks.is_concrete(valid, features, quality):
    return
  _checks.check_finite("features", jnp.where(valid[..., None], features, 0))
  if quality is not None:
    q = jnp.where(valid, quality, 0)
    _checks.check_finite("quality", q)
    q = np.asarray(jax.device_get(q), np.float32)
    if (q < 0).any():
      raise ValueError(
          f"quality holds {int((q < 0).sum())} negative value(s) (min {q.min():g}); "
          "QAN's quality scores are sigmoid outputs in [0, 1]. Apply "
          "jax.nn.sigmoid to the quality head's logits.")


# --------------------------------------------------------------------------
# QAN quality pooling, padded sets.


def degenerate_floor(dtype, eps=None) -> float:
  """The weight sum at or below which a set counts as degenerate (all zero).

  eps=None (default): sqrt of the dtype's smallest normal number (1.1e-19 in
  float32, 1.5e-154 in float64), i.e. "zero up to underflow". Pooling is
  invariant to the scale of mu, so the test must not depend on it: any
  sum above the floor keeps its weights, however small (mu = [1e-12, 0, 0]
  pools to the first element, as mu = [1, 0, 0] does). The floor is the
  square root of the smallest normal so that dR_a/dmu_i = (R_i - R_a) / sum mu
  stays below ~1e19 |R_i - R_a| and never overflows. A float eps sets an
  absolute floor instead (not scale invariant).
  """
  if eps is not None:
    return float(eps)
  return float(np.sqrt(np.finfo(np.dtype(dtype)).tiny))


def _effective_weights(quality, valid, eps):
  """Weights mu_i (masked), with the degenerate-set fallback mu_i = valid_i.

  Returns (mu, total, safe_total): total = sum_i mu_i over the set; safe_total
  is total where it is positive and 1 elsewhere (only empty sets have
  total == 0 after the fallback), so every division is finite.
  """
  mu = jnp.where(valid, quality, 0)
  floor = degenerate_floor(mu.dtype, eps)
  degenerate = jnp.sum(mu, axis=-1, keepdims=True) <= floor
  mu = jnp.where(degenerate, valid.astype(mu.dtype), mu)
  total = jnp.sum(mu, axis=-1)
  safe_total = jnp.where(total > 0, total, 1)
  return mu, total, safe_total


def _quality_pool_impl(features, quality, valid, eps):
  dtype = _checks.compute_dtype(features, quality)
  x = jnp.where(valid[..., None], features.astype(dtype), 0)
  mu, _, safe_total = _effective_weights(quality.astype(dtype), valid, eps)
  pooled = jnp.einsum("...n,...nd->...d", mu, x) / safe_total[..., None]
  return pooled, (x, mu, safe_total)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _quality_pool(features, quality, valid, eps):
  return _quality_pool_impl(features, quality, valid, eps)[0].astype(features.dtype)


def _quality_pool_fwd(features, quality, valid, eps):
  pooled, (x, mu, safe_total) = _quality_pool_impl(features, quality, valid, eps)
  # Zero-size sentinels carry the input dtypes (residuals must be arrays).
  res = (x, mu, safe_total, pooled, valid, _checks.dtype_tag(features), _checks.dtype_tag(quality))
  return pooled.astype(features.dtype), res


def _quality_pool_bwd(eps, res, g):
  del eps
  x, mu, safe_total, pooled, valid, f_dtype, q_dtype = res
  g = g.astype(x.dtype)
  # Exact eq. (5)/(7): dL/dR_i = dL/dR_a * mu_i / sum_j mu_j.
  d_features = (mu / safe_total[..., None])[..., None] * g[..., None, :]
  # Exact eq. (6)/(8): dL/dmu_i = <dL/dR_a, R_i - R_a> / sum_j mu_j.
  d_quality = jnp.einsum("...nd,...d->...n", x - pooled[..., None, :], g)
  d_quality = jnp.where(valid, d_quality / safe_total[..., None], 0)
  return d_features.astype(f_dtype.dtype), d_quality.astype(q_dtype.dtype), None


_quality_pool.defvjp(_quality_pool_fwd, _quality_pool_bwd)


def quality_pool(features, quality, mask=None, *, eps: float | None = None):
  """QAN set pooling, eq. (2): R_a = sum_i mu_i R_i / sum_i mu_i.

  Args:
    features: [..., N, D] per-element representations R_i (set axis -2).
    quality: [..., N] quality scores mu_i >= 0 (QAN: sigmoid outputs).
    mask: optional [..., N] bool, True for the valid elements of a padded set.
    eps: None (default): a set is degenerate only when its valid quality
      sums to zero (up to underflow, see `degenerate_floor`), so the result
      does not depend on the scale of mu. A float: an absolute floor.

  Returns:
    [..., D] pooled representation R_a, in features.dtype (accumulated in
    float32 at least).

  Gradient (jax.custom_vjp), the exact form of QAN eq. (5)-(8):
    dR_a/dR_i = mu_i / sum_j mu_j          (eq. (5); eq. (7) with dL/dR_a)
    dR_a/dmu_i = (R_i - R_a) / sum_j mu_j  (eq. (6); eq. (8): dot with dL/dR_a)
  The paper writes (5)-(6) without the 1/sum_j mu_j factor, i.e. for
  already normalised mu (the official Caffe code L1-normalises mu first, and
  normalising the weights yourself gives the same result here).

  Degenerate input: if sum_i mu_i is zero over the valid elements (all-zero
  quality, e.g. sigmoid underflow; precisely <= degenerate_floor), every valid element gets
  weight 1: the
  result and its gradient are those of quality_pool(features, mask-as-ones),
  i.e. the masked mean, with dR_a/dmu_i = (R_i - R_a) / N_valid. An empty or
  fully masked set gives zeros and zero gradients. Masked elements get zero
  gradient.

  Per-part quality (QAN pools each horizontal body part with its own score):
  with features [..., N, P, D] and quality [..., N, P], move the part axis in
  front of the set axis (`jnp.swapaxes(features, -3, -2)`, `quality.swapaxes(-1, -2)`,
  mask broadcast to [..., P, N]) and call quality_pool once, or jax.vmap it.

  Raises:
    ValueError: wrong ranks/shapes (naming the argument); eagerly also NaN/Inf
      or negative quality in the valid entries.
  """
  features = jnp.asarray(features)
  quality = jnp.asarray(quality)
  valid = _check_set(features, mask, quality)
  _check_values(valid, features, quality)
  return _quality_pool(features, quality, valid, None if eps is None else float(eps))


# --------------------------------------------------------------------------
# QAN quality pooling, ragged sets given by segment ids.


def _segment_impl(features, quality, segment_ids, num_segments, eps):
  dtype = _checks.compute_dtype(features, quality)
  valid = (segment_ids >= 0) & (segment_ids < num_segments)
  ids = jnp.where(valid, segment_ids, 0)
  x = jnp.where(valid[:, None], features.astype(dtype), 0)
  mu = jnp.where(valid, quality.astype(dtype), 0)
  seg_sum = lambda v: jax.ops.segment_sum(v, ids, num_segments)
  degenerate = seg_sum(mu) <= degenerate_floor(dtype, eps)
  mu = jnp.where(degenerate[ids], valid.astype(dtype), mu)
  total = seg_sum(mu)
  safe_total = jnp.where(total > 0, total, 1)
  pooled = seg_sum(mu[:, None] * x) / safe_total[:, None]
  return pooled, (x, mu, ids, valid, safe_total)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _segment_quality_pool(features, quality, segment_ids, num_segments, eps):
  pooled, _ = _segment_impl(features, quality, segment_ids, num_segments, eps)
  return pooled.astype(features.dtype)


def _segment_fwd(features, quality, segment_ids, num_segments, eps):
  pooled, (x, mu, ids, valid, safe_total) = _segment_impl(
      features, quality, segment_ids, num_segments, eps)
  res = (x, mu, ids, valid, safe_total, pooled, _checks.dtype_tag(features),
         _checks.dtype_tag(quality))
  return pooled.astype(features.dtype), res


def _segment_bwd(num_segments, eps, res, g):
  del num_segments, eps
  x, mu, ids, valid, safe_total, pooled, f_dtype, q_dtype = res
  g = g.astype(x.dtype)
  g_i, total_i, pooled_i = g[ids], safe_total[ids], pooled[ids]
  d_features = (mu / total_i)[:, None] * g_i
  d_quality = jnp.sum((x - pooled_i) * g_i, axis=-1) / total_i
  d_quality = jnp.where(valid, d_quality, 0)
  return d_features.astype(f_dtype.dtype), d_quality.astype(q_dtype.dtype), None


_segment_quality_pool.defvjp(_segment_fwd, _segment_bwd)


def segment_quality_pool(features, quality, segment_ids, num_segments: int,
                         *, eps: float | None = None):
  """QAN eq. (2) over ragged sets stored back to back (no padding).

  Args:
    features: [M, D], the elements of all sets concatenated.
    quality: [M] quality scores mu_i >= 0.
    segment_ids: [M] int, the set each element belongs to, in
      [0, num_segments); rows with an id outside that range are ignored
      (use -1 to drop a row), as are their gradients.
    num_segments: static number of sets K.
    eps: as in `quality_pool` (None: degenerate only when the segment's
      quality sums to zero, scale invariant).

  Returns:
    [K, D]: row k is sum_{i in k} mu_i R_i / sum_{i in k} mu_i.

  Gradient (jax.custom_vjp): the exact eq. (5)-(8) of quality_pool, per
  segment: dR_k/dR_i = mu_i / sum_{j in k} mu_j, dR_k/dmu_i =
  (R_i - R_k) / sum_{j in k} mu_j. Degenerate sets follow quality_pool:
  all-zero quality gives the segment mean (weights 1), a segment with no
  element gives zeros, both with finite gradients.
  """
  features = jnp.asarray(features)
  quality = jnp.asarray(quality)
  segment_ids = jnp.asarray(segment_ids)
  _checks.check_rank("features", features, 2, "[elements, dim]")
  _checks.check_shape("features", features, (None, None), "[elements, dim]")
  m = features.shape[0]
  _checks.check_shape("quality", quality, (m,), "one score per row of features")
  _checks.check_shape("segment_ids", segment_ids, (m,), "one id per row of features")
  if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError(f"segment_ids must be integers; got dtype {segment_ids.dtype}.")
  _checks.check_float("features", features)
  _checks.check_float("quality", quality)
  num_segments = int(num_segments)
  if num_segments < 1:
    raise ValueError(f"num_segments must be >= 1 (the number of sets K); got {num_segments}.")
  if _checks.is_concrete(features, quality, segment_ids):
    valid = (segment_ids >= 0) & (segment_ids < num_segments)
    _check_values(valid, features, quality)
  return _segment_quality_pool(features, quality, segment_ids, num_segments,
                               None if eps is None else float(eps))


# --------------------------------------------------------------------------
# Baselines (plain autodiff; no custom_vjp needed).


def _masked_count(valid, dtype):
  count = jnp.sum(valid, axis=-1).astype(dtype)
  return count, jnp.where(count > 0, count, 1)


def mean_pool(features, mask=None):
  """Average pooling over the set axis: sum_i R_i / N_valid.

  features [..., N, D], mask [..., N] bool -> [..., D]. An empty or fully
  masked set gives zeros (and zero gradient).
  """
  features = jnp.asarray(features)
  valid = _check_set(features, mask)
  _check_values(valid, features)
  dtype = _checks.compute_dtype(features)
  x = jnp.where(valid[..., None], features.astype(dtype), 0)
  _, safe = _masked_count(valid, dtype)
  return (jnp.sum(x, axis=-2) / safe[..., None]).astype(features.dtype)


def max_pool(features, mask=None):
  """Element-wise max over the valid set elements: max_i R_i.

  features [..., N, D], mask [..., N] bool -> [..., D]. The gradient goes to
  the arg-max element (split evenly on exact ties, as jnp.max does). An
  empty or fully masked set gives zeros (and zero gradient).
  """
  features = jnp.asarray(features)
  valid = _check_set(features, mask)
  _check_values(valid, features)
  dtype = _checks.compute_dtype(features)
  lowest = jnp.finfo(dtype).min
  x = jnp.where(valid[..., None], features.astype(dtype), lowest)
  if features.shape[-2] == 0:
    return jnp.zeros(features.shape[:-2] + features.shape[-1:], features.dtype)
  out = jnp.max(x, axis=-2)
  nonempty = jnp.any(valid, axis=-1)[..., None]
  return jnp.where(nonempty, out, 0).astype(features.dtype)


# Below this |p| GeM uses its expansion around the geometric mean (see gem_pool).
GEM_SMALL_P = 1e-3


def gem_pool(features, mask=None, p=3.0, eps: float = 1e-6):
  """Generalised-mean (GeM) pooling over the set axis (Radenovic et al., eq. (1)).

  (sum_i max(R_i, eps)^p / N_valid)^(1/p), element-wise over D. p = 1 is the
  mean of the clamped features, p -> inf tends to max pooling, p -> 0 to the
  geometric mean exp(mean_i log R_i). p may be a traced scalar (GeM learns
  it); gradients flow to features and p.

  features [..., N, D], mask [..., N] bool -> [..., D]. An empty or fully
  masked set gives zeros (and zero gradient). The clamp at eps keeps the
  power and its gradient finite (features below eps get zero gradient).

  Degenerate p: for |p| < GEM_SMALL_P (1e-3), including p = 0 (a learnable p
  initialised to zeros), the formula's 1/p is replaced by its expansion
  log M_p = mean(log R) + p var(log R) / 2 + O(p^2), whose value at p = 0 is
  the geometric mean and whose p-gradient there is the true one,
  M_0 var(log R) / 2 (not 0), so p can leave 0. Finite for every finite p.
  """
  features = jnp.asarray(features)
  valid = _check_set(features, mask)
  _check_values(valid, features)
  dtype = _checks.compute_dtype(features)
  _checks.check_finite("p", p)
  p = jnp.asarray(p, dtype)
  count, safe = _masked_count(valid, dtype)
  nonempty = (count > 0)[..., None]
  small = jnp.abs(p) < GEM_SMALL_P
  # Double where: the unused branch gets a harmless p, so neither branch's
  # gradient can be NaN.
  p_big = jnp.where(small, 1.0, p)
  x = jnp.maximum(features.astype(dtype), eps)
  mean = jnp.sum(jnp.where(valid[..., None], x ** p_big, 0), axis=-2) / safe[..., None]
  general = jnp.where(nonempty, mean, 1) ** (1 / p_big)
  log_x = jnp.where(valid[..., None], jnp.log(x), 0)
  log_mean = jnp.sum(log_x, axis=-2) / safe[..., None]
  log_var = jnp.sum(jnp.where(valid[..., None], (log_x - log_mean[..., None, :]) ** 2, 0),
                    axis=-2) / safe[..., None]
  p_small = jnp.where(small, p, 0.0)
  near_zero = jnp.exp(log_mean + p_small * log_var / 2)
  out = jnp.where(small, near_zero, general)
  return jnp.where(nonempty, out, 0).astype(features.dtype)
