"""Margin softmax heads: combined (Sphere/Arc/CosFace) margin, EQFace, AdaFace.

Every function here maps cosines `cos` [B, C] (between L2-normalised
embeddings and L2-normalised class weights) and integer `labels` [B] to logits
[B, C] for a softmax cross-entropy. Shared conventions:

* Only the target column changes: the ops gather the B target cosines and
  write every entry in one pass, the scaled cosine or, where the column index
  equals the label, the margined target (a select fused with the pass; no
  one-hot [B, C] array), forward and backward. Each op is a
  `jax.custom_vjp` whose backward is the written gradient formula.
* `labels < 0` marks an ignored row: it gets no margin (its logits are the
  plain scaled cosines). The op does not mask the loss: the caller must, e.g.
  `jnp.where(labels >= 0, ce, 0).sum() / max((labels >= 0).sum(), 1)`.
  Called eagerly, labels >= C raise ValueError; under jit such rows get no
  margin either.
* The margin arithmetic runs in float32 at least (bfloat16 cosines are
  upcast for the B target entries only); logits come back in `cos.dtype`.
* Cosines at +-1, or slightly outside [-1, 1] (rounding after normalisation),
  never give NaN/Inf: see `COS_CLIP_EPS`. Called eagerly, NaN/Inf in `cos`
  raise ValueError.

Gradient conventions (`grad=`; docs/conventions.md, margin softmax heads):

* "exact": differentiate through the margin. For a target value f(cos) the
  target column's gradient is s * dL/dlogit * f'(cos); for ArcFace
  f'(cos) = sin(theta + m) / sin(theta).
* "straight_through": current insightface, which applies the margin under
  no_grad: dL/dcos = s * dL/dlogit for every entry, as if there were no margin.

References: ArcFace (Deng et al., CVPR 2019, arXiv 1801.07698), CosFace (Wang et
al., CVPR 2018, arXiv 1801.09414), EQFace (Liu and Tan, CVPR 2021 workshops,
arXiv 2105.00634), AdaFace (Kim et al., CVPR 2022, arXiv 2204.00964).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxset.ops import _checks

__all__ = [
    "COS_CLIP_EPS", "margin_logits", "eqface_logits", "adaface_logits",
    "adaface_init_stats", "adaface_gradient_scaling_term", "adaface_norm_scaler",
]

# Target cosines are clipped to [-1 + eps, 1 - eps] before arccos and before
# dividing by sin(theta) = sqrt(1 - cos^2). With eps = 1e-6 (computed in
# float32 at least) sin(theta) >= sqrt(2e-6), so the exact-gradient factor
# m1 * sin(...) / sin(theta) is at most m1 / 1.414e-3 ~ 707 * m1: finite. The
# factor is evaluated at the clipped cosine (not zeroed), so a target at
# cos = +-1 still receives a bounded gradient.
COS_CLIP_EPS = 1e-6
# Called eagerly, |cos| beyond 1 + COS_RANGE_TOL raises: such values are not
# rounding but unnormalised embeddings or weights.
COS_RANGE_TOL = 1e-2

_GRADS = ("exact", "straight_through")
_M1_MODES = ("cosine", "angle")
_FALLBACKS = ("arcface", "easy", "none")


def _dtype_tag(x):
  # Zero-size sentinel: residuals must be arrays, dtypes are not.
  return jnp.zeros((0,), x.dtype)


class _Margin(NamedTuple):
  """Static hyperparameters of the combined margin (hashable: nondiff arg)."""
  m1: float
  m2: float
  m3: float
  m1_mode: str
  fallback: str
  grad: str
  row_grad: bool  # also return d loss / d row scale (EQFace quality)


def _target_margin(c, p: _Margin):
  """Margined target value f(c) and its derivative f'(c), for c [B] float32+.

  "cosine" mode (EQFace eq. (3) as printed): f = m1 * cos(theta + m2) - m3,
  f' = m1 * sin(theta + m2) / sin(theta). "angle" mode (ArcFace paper eq. (4),
  insightface; SphereFace's multiplicative angle): f = cos(m1 * theta + m2) - m3,
  f' = m1 * sin(m1 * theta + m2) / sin(theta). theta = arccos(clip(c)).
  """
  if p.m2 == 0.0 and (p.m1_mode == "cosine" or p.m1 == 1.0):
    # No angular part: f is affine in c (CosFace, plain softmax); no arccos,
    # so the result is exact and defined for any c.
    return p.m1 * c - p.m3, jnp.full_like(c, p.m1)
  cc = jnp.clip(c, -1.0 + COS_CLIP_EPS, 1.0 - COS_CLIP_EPS)
  theta = jnp.arccos(cc)
  sin_theta = jnp.sqrt((1.0 - cc) * (1.0 + cc))  # accurate near +-1
  if p.m1_mode == "cosine":
    phi = theta + p.m2
    value = p.m1 * jnp.cos(phi) - p.m3
  else:
    phi = p.m1 * theta + p.m2
    value = jnp.cos(phi) - p.m3
  deriv = p.m1 * jnp.sin(phi) / sin_theta
  if p.fallback == "arcface" and p.m2 > 0.0:
    # ArcFace: theta + m2 > pi makes cos(theta + m2) increase with theta; the
    # common fix swaps in cos(theta) - m2 * sin(m2) there (insightface's
    # `th = cos(pi - m)`, `mm = sin(pi - m) * m`; the EQFace code does the same).
    region = c <= math.cos(math.pi - p.m2)
    value = jnp.where(region, p.m1 * (c - p.m2 * math.sin(p.m2)) - p.m3, value)
    deriv = jnp.where(region, p.m1, deriv)
  elif p.fallback == "easy":
    # ArcFace's easy_margin: no additive angle where cos <= 0; m1 and m3 stay
    # (the margin without m2: m1*cos - m3, or cos(m1*theta) - m3 in "angle" mode).
    region = c <= 0
    if p.m1_mode == "cosine":
      easy_value, easy_deriv = p.m1 * c - p.m3, jnp.full_like(c, p.m1)
    else:
      easy_value = jnp.cos(p.m1 * theta) - p.m3
      easy_deriv = p.m1 * jnp.sin(p.m1 * theta) / sin_theta
    value = jnp.where(region, easy_value, value)
    deriv = jnp.where(region, easy_deriv, deriv)
  return value, deriv


def _target_index(labels, num_classes):
  """(safe, drop): safe in [0, C) for gathers; drop = C for ignored rows."""
  valid = (labels >= 0) & (labels < num_classes)
  safe = jnp.clip(labels, 0, num_classes - 1)
  drop = jnp.where(valid, safe, num_classes)
  return valid, safe, drop


def _patch(x, cols, values):
  """x with x[i, cols[i]] = values[i]; cols == C (ignored rows) are skipped.

  A select against the column index rather than a scatter: XLA fuses it
  with the elementwise pass that writes x (one pass over [B, C], x's buffer
  reused), where a scatter needs x written first and, in the backward, a
  second [B, C] buffer (benchmarks/ops_margins.py, head_bxc).
  """
  hit = lax.broadcasted_iota(jnp.int32, x.shape, 1) == cols[:, None]
  return jnp.where(hit, values.astype(x.dtype)[:, None], x)


def _margin_impl(cos, labels, row_scale, p: _Margin):
  ct = _checks.compute_dtype(cos)
  b, c = cos.shape
  rows = jnp.arange(b)
  valid, safe, drop = _target_index(labels, c)
  c_t = cos[rows, safe].astype(ct)
  value, deriv = _target_margin(c_t, p)
  r = row_scale.astype(ct)
  logits = (cos.astype(ct) * r[:, None]).astype(cos.dtype)
  logits = _patch(logits, drop, r * value)
  return logits, (valid, safe, drop, c_t, value, deriv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _margin_rows(cos, labels, row_scale, p):
  return _margin_impl(cos, labels, row_scale, p)[0]


def _margin_rows_fwd(cos, labels, row_scale, p):
  logits, (valid, safe, drop, c_t, value, deriv) = _margin_impl(cos, labels, row_scale, p)
  # cos itself is kept only when the row-scale gradient needs it (EQFace).
  kept_cos = cos if p.row_grad else _dtype_tag(cos)
  res = (kept_cos, valid, safe, drop, c_t, value, deriv, row_scale, _dtype_tag(cos))
  return logits, res


def _margin_rows_bwd(p, res, g):
  kept_cos, valid, safe, drop, c_t, value, deriv, row_scale, cos_tag = res
  ct = c_t.dtype
  b = g.shape[0]
  rows = jnp.arange(b)
  r = row_scale.astype(ct)
  g_t = g[rows, safe].astype(ct)
  # Every entry: d logit / d cos = row scale (s, or s_i * S for EQFace).
  d_cos = (g.astype(ct) * r[:, None]).astype(cos_tag.dtype)
  if p.grad == "exact":
    # Target column: s * f'(cos), e.g. s * sin(theta + m) / sin(theta).
    d_cos = _patch(d_cos, drop, r * g_t * deriv)
  if p.row_grad:
    # d L / d row_scale_i = sum_j g_ij * base_ij, base = margined cosines:
    # the plain sum over the row, corrected at the target entry.
    total = jnp.sum(g.astype(ct) * kept_cos.astype(ct), axis=1)
    d_row = total + jnp.where(valid, g_t * (value - c_t), 0)
    d_row = d_row.astype(row_scale.dtype)
  else:
    d_row = jnp.zeros_like(row_scale)
  return d_cos, None, d_row


_margin_rows.defvjp(_margin_rows_fwd, _margin_rows_bwd)
# One executable per shape and margin when called eagerly (op-by-op dispatch
# of the ~30 small ops is slower than the matmul-free work itself).
_margin_rows_jit = jax.jit(_margin_rows, static_argnums=3)


def _check_common(cos, labels):
  _checks.check_shape("cos", cos, (None, None), "[batch, num_classes] cosines")
  b, c = cos.shape
  _checks.check_shape("labels", labels, (b,), "[batch] int class ids, -1 = ignore the row")
  if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
    raise ValueError(f"labels must be integers; got dtype {jnp.asarray(labels).dtype}.")
  _checks.check_float("cos", cos)
  _checks.check_finite("cos", cos)
  _checks.check_labels("labels", labels, c)
  if _checks.is_concrete(cos) and cos.size:
    worst = float(np.max(np.abs(np.asarray(cos))))
    if worst > 1 + COS_RANGE_TOL:
      raise ValueError(
          f"cos holds values outside [-1, 1] (max |cos| = {worst:g}): these are not "
          "cosines. L2-normalise the embeddings and the class weights before the "
          "matmul (rounding slightly past +-1 is fine).")


def _check_scale(scale) -> None:
  _checks.check_scalar_range("scale", scale, 0.0, math.inf, "the logit scale s, e.g. 64",
                             low_open=True)


def _make_margin(m1, m2, m3, m1_mode, fallback, grad, row_grad) -> _Margin:
  if grad not in _GRADS:
    raise ValueError(f"grad must be one of {_GRADS}; got {grad!r}.")
  if m1_mode not in _M1_MODES:
    raise ValueError(f"m1_mode must be one of {_M1_MODES}; got {m1_mode!r}.")
  if fallback is None:
    fallback = "arcface" if m1_mode == "cosine" else "none"
  if fallback not in _FALLBACKS:
    raise ValueError(f"fallback must be one of {_FALLBACKS} or None; got {fallback!r}.")
  if fallback == "arcface" and m1_mode == "angle":
    raise ValueError(
        "fallback='arcface' is defined for m1_mode='cosine' only (theta + m2 > pi); "
        "with m1_mode='angle' use fallback='none' (insightface's combined margin has "
        "no fallback) or 'easy'.")
  return _Margin(float(m1), float(m2), float(m3), m1_mode, fallback, grad, row_grad)


def margin_logits(cos, labels, *, scale: float, m1: float = 1.0, m2: float = 0.0,
                  m3: float = 0.0, grad: str = "exact", m1_mode: str = "cosine",
                  fallback: str | None = None):
  """Combined-margin logits, EQFace eq. (3): target s*(m1*cos(theta + m2) - m3).

  Non-target entries are s*cos(theta_j). With m1_mode="cosine" (default) the
  target is s*(m1*cos(theta + m2) - m3), eq. (3) of the EQFace paper as
  printed (and docs/conventions.md). m1_mode="angle" gives s*(cos(m1*theta + m2) - m3),
  the combined margin of the ArcFace paper (its eq. (4)) and insightface, whose
  m1 is SphereFace's multiplicative angular margin. The two agree when m1 = 1,
  the only value the EQFace code and experiments use. Special cases:
  (1, 0, 0) plain normalised softmax s*cos; (1, m, 0) ArcFace; (1, 0, m)
  CosFace; (m, 0, 0) with m1_mode="angle" SphereFace (cos(m*theta), without
  SphereFace's piecewise psi). Every (m1, m2, m3) combination works
  (insightface's CombinedMarginLoss drops m1, m2 when m3 > 0).

  Args:
    cos: [B, C] cosines, float32/bfloat16/float64. Values slightly outside
      [-1, 1] are fine (clipped, see COS_CLIP_EPS).
    labels: [B] int; < 0 ignores the row (no margin; mask its loss yourself).
    scale: s, the logit scale (e.g. 64). May be traced (a learnable scale):
      d logits / d s is then the margined cosine of each entry.
    m1, m2, m3: multiplicative, additive-angle and additive-cosine margins.
    grad: "exact" (differentiate through the margin) or "straight_through"
      (insightface: margin without gradient, dlogits/dcos = s everywhere).
    m1_mode: "cosine" (paper eq. (3)) or "angle" (insightface / SphereFace).
    fallback: where theta + m2 > pi the ArcFace margin is not monotonic.
      "arcface": use m1*(cos(theta) - m2*sin(m2)) - m3 where
      cos(theta) <= cos(pi - m2) (only when m2 > 0); "easy": no additive
      angle where cos(theta) <= 0 (ArcFace's easy_margin; m1 and m3 still
      apply: m1*cos(theta) - m3, or cos(m1*theta) - m3 for "angle");
      "none": the formula everywhere.
      None (default) = "arcface" for m1_mode="cosine", "none" for "angle".

  Returns:
    [B, C] logits in cos.dtype.

  Degenerate input: cos = +-1 or slightly outside gives finite logits and
  gradients; B = 0 gives an empty result. Eagerly, NaN/Inf cos or labels >= C
  raise ValueError.
  """
  _check_common(cos, labels)
  _check_scale(scale)
  # A traced scale needs its gradient (the row-scale gradient of eqface_logits);
  # a Python float does not, and then cos is not kept for the backward.
  traced_scale = isinstance(scale, jax.core.Tracer)
  p = _make_margin(m1, m2, m3, m1_mode, fallback, grad, row_grad=traced_scale)
  row_scale = jnp.full((cos.shape[0],), scale, _checks.compute_dtype(cos))
  return _margin_rows_jit(cos, labels, row_scale, p)


def eqface_logits(cos, labels, quality, *, scale: float, m1: float = 1.0,
                  m2: float = 0.5, m3: float = 0.0, quality_transform: str = "paper",
                  grad: str = "exact", m1_mode: str = "cosine",
                  fallback: str | None = None):
  """EQFace loss (6) logits: the whole eq. (3) row times s_i * S.

  logits_ij = r_i * base_ij with base the combined-margin cosines of
  `margin_logits` (target m1*cos(theta + m2) - m3, others cos(theta_j)) and the
  row scale r_i = s_i * S ("paper", s_i = quality_i in [0, 1]) or, as the EQFace
  code does, r_i = S * clamp(s_i - 0.2, 0, 1) * 1.2 ("official"). Gradients
  flow to cos (as in margin_logits, times r_i) and to quality:
  dL/dr_i = sum_j dL/dlogit_ij * base_ij, so for "paper"
  dL/ds_i = S * sum_j dL/dlogit_ij * base_ij. (The EQFace code trains this with
  a focal loss, gamma = 2, rather than plain cross-entropy; use any loss on
  these logits.)

  Args:
    cos, labels, m1, m2, m3, grad, m1_mode, fallback: as in `margin_logits`.
    quality: [B] quality scores s_i, nominally in [0, 1].
    scale: S, the fixed scale (the EQFace code uses 64).
    quality_transform: "paper" or "official" (see above).

  Returns:
    [B, C] logits in cos.dtype.

  Degenerate input: s_i = 0 gives a zero row (uniform softmax) whose cos
  gradient is zero while dL/ds_i stays finite. Eagerly, NaN/Inf in cos or
  quality and labels >= C raise ValueError.
  """
  _check_common(cos, labels)
  _checks.check_shape("quality", quality, (cos.shape[0],), "[batch] quality scores s_i")
  _checks.check_float("quality", quality)
  _checks.check_finite("quality", quality)
  _check_scale(scale)
  if quality_transform not in ("paper", "official"):
    raise ValueError(
        f"quality_transform must be 'paper' or 'official'; got {quality_transform!r}.")
  p = _make_margin(m1, m2, m3, m1_mode, fallback, grad, row_grad=True)
  q = jnp.asarray(quality).astype(_checks.compute_dtype(cos))
  if quality_transform == "official":
    q = jnp.clip(q - 0.2, 0.0, 1.0) * 1.2
  return _margin_rows_jit(cos, labels, scale * q, p)


# --------------------------------------------------------------------------
# AdaFace.


def adaface_init_stats():
  """The official head's initial norm statistics {"mean": 20, "std": 100}."""
  return {"mean": jnp.asarray(20.0, jnp.float32), "std": jnp.asarray(100.0, jnp.float32)}


def adaface_norm_scaler(norms, mean, std, *, h: float = 0.333, eps: float = 1e-3):
  """AdaFace eq. (7): z_hat = clip(h * (||z|| - mu) / (sigma + eps), -1, 1).

  norms [B] (already clipped to [0.001, 100]); mean, std scalars (the updated
  EMA). Returns [B] float32+ in [-1, 1].
  """
  z = h * (norms - mean) / (std + eps)
  return jnp.clip(z, -1.0, 1.0)


def adaface_gradient_scaling_term(cos, z_hat, m: float = 0.4, eps: float = 1e-3):
  """d(target logit / s) / d cos for AdaFace: the margin part of the GST.

  AdaFace writes the target-column gradient as
  (P_y - 1) * s * df(cos theta)/dcos theta, and calls the factor multiplying
  (P_y - 1) the gradient scaling term (GST). With the adaptive angular margin
  g_angle = -m * z_hat, f = cos(theta + g_angle) - g_add and
    df/dcos = cos(g_angle) + cos(theta) * sin(g_angle) / sqrt(1 - cos^2 theta)
            = sin(theta + g_angle) / sin(theta),
  (g_add does not depend on cos). Following the official head's clamps,
  the factor is 0 where cos is outside [-1 + eps, 1 - eps] or theta + g_angle
  is outside [eps, pi - eps] (those entries are clamped, so constant).

  Args:
    cos: [B] target cosines (raw; clamped here).
    z_hat: [B] norm scalers in [-1, 1] (`adaface_norm_scaler`).
    m: the margin; eps: the official head's clamp epsilon.

  Returns:
    [B] in float32 at least.
  """
  ct = _checks.compute_dtype(cos)
  c = cos.astype(ct)
  inside = (c >= -1.0 + eps) & (c <= 1.0 - eps)
  cc = jnp.clip(c, -1.0 + eps, 1.0 - eps)
  theta = jnp.arccos(cc)
  theta_m = theta - m * z_hat.astype(ct)
  inside &= (theta_m >= eps) & (theta_m <= math.pi - eps)
  sin_theta = jnp.sqrt((1.0 - cc) * (1.0 + cc))
  return jnp.where(inside, jnp.sin(theta_m) / sin_theta, 0.0)


class _Ada(NamedTuple):
  m: float
  scale: float
  eps: float


def _adaface_target(c_t, z_hat, p: _Ada):
  cc = jnp.clip(c_t, -1.0 + p.eps, 1.0 - p.eps)
  theta = jnp.arccos(cc)
  theta_m = jnp.clip(theta - p.m * z_hat, p.eps, math.pi - p.eps)  # + g_angle
  return jnp.cos(theta_m) - (p.m * z_hat + p.m)  # - g_add


def _adaface_impl(cos, labels, z_hat, p: _Ada):
  ct = _checks.compute_dtype(cos)
  b, c = cos.shape
  rows = jnp.arange(b)
  _, safe, drop = _target_index(labels, c)
  c_t = cos[rows, safe].astype(ct)
  z = z_hat.astype(ct)
  # Non-target columns: the official cos(clip(arccos(clip(cos)), eps, pi-eps))
  # is clip(cos) (arccos(1 - eps) > eps, so the theta clip never binds there).
  logits = (p.scale * jnp.clip(cos.astype(ct), -1.0 + p.eps, 1.0 - p.eps)).astype(cos.dtype)
  logits = _patch(logits, drop, p.scale * _adaface_target(c_t, z, p))
  return logits, (safe, drop, c_t, z)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _adaface_rows(cos, labels, z_hat, p):
  return _adaface_impl(cos, labels, z_hat, p)[0]


def _pack_bits(mask):
  """[B, C] bool -> [B, ceil(C / 8)] uint8, 8 columns a byte."""
  b, c = mask.shape
  m = jnp.pad(mask, ((0, 0), (0, -c % 8))).reshape(b, -1, 8).astype(jnp.uint8)
  return jnp.sum(m << jnp.arange(8, dtype=jnp.uint8), axis=2, dtype=jnp.uint8)


def _unpack_bits(packed, c):
  """_pack_bits' inverse: [B, C] bool."""
  bits = (packed[:, :, None] >> jnp.arange(8, dtype=jnp.uint8)) & 1
  return bits.reshape(packed.shape[0], -1)[:, :c].astype(bool)


def _adaface_rows_fwd(cos, labels, z_hat, p):
  logits, (safe, drop, c_t, z) = _adaface_impl(cos, labels, z_hat, p)
  # The clamp's gradient mask is kept as bits (1/32 of cos), not cos: neither
  # cos nor the logits are otherwise alive in the backward. (A bool array
  # would be fused into the backward by XLA, which then keeps cos alive.)
  ct = c_t.dtype
  inside = (cos.astype(ct) >= -1.0 + p.eps) & (cos.astype(ct) <= 1.0 - p.eps)
  return logits, (_pack_bits(inside), safe, drop, c_t, z, _dtype_tag(cos))


def _adaface_rows_bwd(p, res, g):
  packed, safe, drop, c_t, z, cos_tag = res
  inside = _unpack_bits(packed, g.shape[1])
  ct = c_t.dtype
  rows = jnp.arange(g.shape[0])
  g_t = g[rows, safe].astype(ct)
  # Non-target: d(s * clip(cos))/dcos = s inside the clamp (bounds inclusive,
  # as torch.clamp's backward), 0 where it binds.
  d_cos = jnp.where(inside, p.scale * g.astype(ct), 0.0).astype(cos_tag.dtype)
  gst = adaface_gradient_scaling_term(c_t, z, p.m, p.eps)
  d_cos = _patch(d_cos, drop, p.scale * g_t * gst)
  # Norms are stop-gradient in AdaFace: z_hat gets no gradient.
  return d_cos, None, jnp.zeros_like(z)


_adaface_rows.defvjp(_adaface_rows_fwd, _adaface_rows_bwd)


def _batch_norm_stats(norms, axis_name):
  """(count, mean, unbiased std) of norms, over all devices if axis_name."""
  n = jnp.asarray(norms.shape[0], norms.dtype)
  total = jnp.sum(norms)
  if axis_name is not None:
    n = lax.psum(n, axis_name)
    total = lax.psum(total, axis_name)
  mean = total / jnp.maximum(n, 1.0)
  # Two passes (mean first) avoid the cancellation of sum(x^2) - n*mean^2.
  sq = jnp.sum(jnp.square(norms - mean))
  if axis_name is not None:
    sq = lax.psum(sq, axis_name)
  std = jnp.sqrt(sq / jnp.maximum(n - 1.0, 1.0))
  return n, mean, std


def adaface_logits(cos, norms, labels, stats, *, m: float = 0.4, h: float = 0.333,
                   scale: float = 64.0, t_alpha: float = 0.01, eps: float = 1e-3,
                   axis_name=None):
  """AdaFace eq. (8)-(10) logits with the official head's conventions.

  Steps (docs/conventions.md, AdaFace; the official head): norms ||z_i|| are stop-gradient and
  clipped to [0.001, 100]; the batch mean and UNBIASED (N - 1) std of the
  norms update the EMA first, mean <- t_alpha*batch_mean + (1 - t_alpha)*mean
  (std alike), and the updated values are used: z_hat = clip(h*(norm -
  mean)/(std + eps), -1, 1) (eq. (7)); cos is clamped to [-1 + eps, 1 - eps];
  the target angle becomes clip(theta + g_angle, eps, pi - eps) with
  g_angle = -m*z_hat and the target cosine loses g_add = m*z_hat + m
  (eq. (9)-(10)); everything times s. z_hat = -1 is ArcFace(m), 0 CosFace(m),
  1 a negative angular margin with offset 2m.

  The paper's EMA momentum alpha = 0.99 is t_alpha = 0.01 here (the official
  head's constructor default t_alpha = 1.0 means "batch statistics only").
  Rows with labels < 0 get no margin (mask their loss) but their norms still
  enter the batch statistics.

  Args:
    cos: [B, C] cosines.
    norms: [B] or [B, 1] embedding norms ||z_i|| (gradient stopped here).
    labels: [B] int, < 0 = ignore the row.
    stats: {"mean", "std"} float32 scalars (start with adaface_init_stats()).
    m, h, scale, t_alpha, eps: the head's hyperparameters.
    axis_name: inside pmap/shard_map, the batch axis name: the batch mean
      and std are then taken over ALL devices' norms (psum of count, sum and
      squared deviations; unbiased with the global N), so every device gets
      the same new stats, equal to one device seeing the whole batch. The
      official code computes them per device with no cross-device reduction
      (pass axis_name=None inside shard_map to reproduce that; the stats then
      differ across devices).

  Returns:
    (logits [B, C] in cos.dtype, new_stats {"mean", "std"} in the dtype of
    `stats`; the statistics are computed in float32 at least).

  Degenerate input: a global batch of one norm has no unbiased std; the EMA
  then keeps its previous std (the mean is still updated). An empty batch
  (B = 0, or an empty shard with axis_name=None) keeps both statistics. All rows ignored:
  plain s*clip(cos) logits, stats still updated. cos = +-1: finite logits and
  gradients (the clamp's gradient is 0 outside [-1 + eps, 1 - eps]). The
  gradient w.r.t. norms and stats is zero. Eagerly, NaN/Inf in cos or norms,
  or labels >= C raise ValueError.
  """
  _check_common(cos, labels)
  b = cos.shape[0]
  if jnp.ndim(norms) == 2:
    _checks.check_shape("norms", norms, (b, 1), "[batch] or [batch, 1] embedding norms")
    norms = jnp.reshape(norms, (b,))
  _checks.check_shape("norms", norms, (b,), "[batch] or [batch, 1] embedding norms")
  _checks.check_float("norms", norms)
  _checks.check_finite("norms", norms)
  # numpy, not jnp: a concrete array closed over inside jit would be traced.
  low = float(np.min(np.asarray(norms))) if _checks.is_concrete(norms) and b else 0.0
  if low < 0:
    raise ValueError(f"norms must be >= 0 (they are ||z_i||); got min {low:g}. "
                     "Pass jnp.linalg.norm(embeddings, axis=-1).")
  if not isinstance(stats, dict) or set(stats) != {"mean", "std"}:
    raise ValueError("stats must be a dict {'mean', 'std'}; start from adaface_init_stats().")
  _checks.check_finite("stats['mean']", stats["mean"])
  _checks.check_finite("stats['std']", stats["std"])
  _check_scale(scale)
  p = _Ada(float(m), float(scale), float(eps))
  return _adaface_step(cos, norms, labels, stats, p, float(h), float(t_alpha), axis_name)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _adaface_step(cos, norms, labels, stats, p, h, t_alpha, axis_name):
  ct = _checks.compute_dtype(cos)
  old_mean, old_std = jnp.asarray(stats["mean"]), jnp.asarray(stats["std"])
  # Statistics in float32 at least (float64 if the norms or stats are);
  # the new stats keep the dtype of the old ones, so a jit carry is stable.
  st = _checks.compute_dtype(jnp.asarray(norms), old_mean, old_std)
  norms = lax.stop_gradient(jnp.clip(jnp.asarray(norms).astype(st), 0.001, 100.0))
  old_mean = lax.stop_gradient(old_mean.astype(st))
  old_std = lax.stop_gradient(old_std.astype(st))
  n, batch_mean, batch_std = _batch_norm_stats(norms, axis_name)
  # No norm at all (an empty batch, or an empty shard without axis_name):
  # nothing was measured, so the EMA keeps its mean (not a batch mean of 0).
  new_mean = jnp.where(n > 0, t_alpha * batch_mean + (1.0 - t_alpha) * old_mean, old_mean)
  new_std = jnp.where(n > 1, t_alpha * batch_std + (1.0 - t_alpha) * old_std, old_std)
  z_hat = adaface_norm_scaler(norms, new_mean, new_std, h=h, eps=p.eps).astype(ct)
  logits = _adaface_rows(cos, labels, lax.stop_gradient(z_hat), p)
  new_stats = {"mean": new_mean.astype(jnp.asarray(stats["mean"]).dtype),
               "std": new_std.astype(jnp.asarray(stats["std"]).dtype)}
  return logits, new_stats
