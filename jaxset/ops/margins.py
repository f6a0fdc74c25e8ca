"""Margin softmax heads: combined (Sphere/Arc/CosFace) margin, EQFace, AdaFace, MagFace.

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

One description per head (`HeadSpec`, registry `HEADS`): its keyword
arguments and their ranges, its per-row input (EQFace's quality, AdaFace's
and MagFace's feature norm), and `terms`: from the target cosines, the row
scale r, the target value f and its derivative f', and (AdaFace) the new
statistics. margin_logits & co. here, the fused cross-entropy
(jaxset.ops.margin_ce), Partial FC (jaxset.ops.partial_fc) and the Flax heads
all consume a spec by name; nothing else dispatches on the head's name.

References: ArcFace (Deng et al., CVPR 2019, arXiv 1801.07698), CosFace (Wang et
al., CVPR 2018, arXiv 1801.09414), EQFace (Liu and Tan, CVPR 2021 workshops,
arXiv 2105.00634), AdaFace (Kim et al., CVPR 2022, arXiv 2204.00964), MagFace
(Meng et al., CVPR 2021, arXiv 2103.06627).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxset.ops import _checks

__all__ = [
    "COS_CLIP_EPS", "HEADS", "HeadSpec", "HeadTerms", "head_spec", "head_logits",
    "register_head",
    "margin_logits", "eqface_logits", "adaface_logits", "magface_logits",
    "adaface_init_stats", "adaface_gradient_scaling_term", "adaface_norm_scaler",
    "adaface_update_stats", "magface_margin", "magface_regularizer",
    "target_cosines", "target_index", "check_cosines",
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


# --------------------------------------------------------------------------
# The target formulas.


class _Margin(NamedTuple):
  """Static hyperparameters of the combined margin (hashable: a jit static)."""
  m1: float
  m2: float
  m3: float
  m1_mode: str
  fallback: str
  grad: str


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


def adaface_init_stats() -> dict:
  """The official head's initial norm statistics {"mean": 20, "std": 100}.

  >>> {k: float(v) for k, v in adaface_init_stats().items()}
  {'mean': 20.0, 'std': 100.0}
  """
  return {"mean": jnp.asarray(20.0, jnp.float32), "std": jnp.asarray(100.0, jnp.float32)}


def adaface_norm_scaler(norms: ArrayLike, mean: ArrayLike, std: ArrayLike, *,
                        h: float = 0.333, eps: float = 1e-3) -> jax.Array:
  """AdaFace eq. (7): z_hat = clip(h * (||z|| - mu) / (sigma + eps), -1, 1).

  norms [B] (already clipped to [0.001, 100]); mean, std scalars (the updated
  EMA). Returns [B] float32+ in [-1, 1].

  >>> adaface_norm_scaler(jnp.array([20.0, 80.0]), 20.0, 10.0).tolist()
  [0.0, 1.0]
  """
  z = h * (norms - mean) / (std + eps)
  return jnp.clip(z, -1.0, 1.0)


def adaface_gradient_scaling_term(cos: ArrayLike, z_hat: ArrayLike, m: float = 0.4,
                                  eps: float = 1e-3) -> jax.Array:
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

  >>> gst = adaface_gradient_scaling_term(jnp.array([0.5]), jnp.array([0.0]))
  >>> [round(x, 4) for x in gst.tolist()]  # z_hat = 0: no angular margin, factor 1
  [1.0]
  """
  cos = jnp.asarray(cos)
  ct = _checks.compute_dtype(cos)
  c = cos.astype(ct)
  inside = (c >= -1.0 + eps) & (c <= 1.0 - eps)
  cc = jnp.clip(c, -1.0 + eps, 1.0 - eps)
  theta = jnp.arccos(cc)
  theta_m = theta - m * jnp.asarray(z_hat).astype(ct)
  inside &= (theta_m >= eps) & (theta_m <= math.pi - eps)
  sin_theta = jnp.sqrt((1.0 - cc) * (1.0 + cc))
  return jnp.where(inside, jnp.sin(theta_m) / sin_theta, 0.0)


def _adaface_target(c_t, z_hat, m, eps):
  """AdaFace eq. (9)-(10) at the target: cos(clip(theta + g_angle)) - g_add."""
  cc = jnp.clip(c_t, -1.0 + eps, 1.0 - eps)
  theta = jnp.arccos(cc)
  theta_m = jnp.clip(theta - m * z_hat, eps, math.pi - eps)  # + g_angle
  return jnp.cos(theta_m) - (m * z_hat + m)  # - g_add


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


def adaface_update_stats(norms: ArrayLike, stats: dict, *, t_alpha: float = 0.01,
                         axis_name=None) -> tuple[jax.Array, dict]:
  """AdaFace's EMA of the batch norm statistics, updated before use (the only copy).

  norms [B] are stop-gradient and clipped to [0.001, 100]; the batch mean and
  UNBIASED (N - 1) std (over every device of `axis_name` if given) update
  mean <- t_alpha * batch_mean + (1 - t_alpha) * mean, std alike. No norm at
  all (B = 0, or an empty shard without axis_name) keeps both; one norm
  keeps the std (no unbiased estimate). Statistics run in float32 at least
  (float64 if the norms or stats are); the new stats keep the old dtypes.

  Returns:
    (clipped norms [B] in the statistics' dtype, {"mean", "std"}).

  >>> _, new = adaface_update_stats(jnp.zeros((0,)), adaface_init_stats())
  >>> float(new["mean"])
  20.0
  """
  norms, new_mean, new_std = _ema(norms, stats, t_alpha, axis_name)
  return norms, {"mean": new_mean.astype(jnp.asarray(stats["mean"]).dtype),
                 "std": new_std.astype(jnp.asarray(stats["std"]).dtype)}


def _ema(norms, stats, t_alpha, axis_name):
  """adaface_update_stats in the statistics' own dtype: (norms, mean, std)."""
  old_mean, old_std = jnp.asarray(stats["mean"]), jnp.asarray(stats["std"])
  st = _checks.compute_dtype(jnp.asarray(norms), old_mean, old_std)
  norms = lax.stop_gradient(jnp.clip(jnp.asarray(norms).astype(st), 0.001, 100.0))
  mean = lax.stop_gradient(old_mean.astype(st))
  std = lax.stop_gradient(old_std.astype(st))
  n, batch_mean, batch_std = _batch_norm_stats(norms, axis_name)
  # Nothing measured: the EMA keeps its mean (not a batch mean of 0).
  new_mean = jnp.where(n > 0, t_alpha * batch_mean + (1.0 - t_alpha) * mean, mean)
  new_std = jnp.where(n > 1, t_alpha * batch_std + (1.0 - t_alpha) * std, std)
  return norms, new_mean, new_std


def magface_margin(norms: ArrayLike, *, l_a: float = 10.0, u_a: float = 110.0,
                   l_m: float = 0.45, u_m: float = 0.8) -> jax.Array:
  """MagFace's magnitude-aware margin m(a), eq. (5) linear form, float32+.

  a = clip(||f||, l_a, u_a), m(a) = l_m + (u_m - l_m) (a - l_a) / (u_a - l_a):
  from l_m at a = l_a to u_m at a = u_a (the official code's defaults).

  >>> [round(x, 3) for x in magface_margin(jnp.array([5.0, 60.0, 200.0])).tolist()]
  [0.45, 0.625, 0.8]
  """
  a = jnp.asarray(norms)
  a = jnp.clip(a.astype(_checks.compute_dtype(a)), l_a, u_a)
  return l_m + (u_m - l_m) * (a - l_a) / (u_a - l_a)


class _Mag(NamedTuple):
  """Static hyperparameters of MagFace's head."""
  l_a: float
  u_a: float
  l_m: float
  u_m: float
  fallback: str
  grad: str


def _magface_parts(c_t, a, p: _Mag):
  """(value, d value/d cos, d value/d a) of MagFace's target cos(theta + m(a)).

  Inside the ArcFace fallback region (cos <= cos(pi - m), the official
  code's `threshold`) the target is cos - m sin(m): d/dm = -(sin m + m cos m);
  ArcFace's easy margin (cos <= 0) keeps cos: d/dm = 0. d m/d a is
  (u_m - l_m)/(u_a - l_a) inside [l_a, u_a] (bounds included, as torch.clamp's
  backward), 0 outside.
  """
  m = magface_margin(a, l_a=p.l_a, u_a=p.u_a, l_m=p.l_m, u_m=p.u_m).astype(c_t.dtype)
  cc = jnp.clip(c_t, -1.0 + COS_CLIP_EPS, 1.0 - COS_CLIP_EPS)
  theta = jnp.arccos(cc)
  sin_theta = jnp.sqrt((1.0 - cc) * (1.0 + cc))
  value, deriv, d_m = jnp.cos(theta + m), jnp.sin(theta + m) / sin_theta, -jnp.sin(theta + m)
  if p.fallback == "arcface":
    region = c_t <= jnp.cos(math.pi - m)
    value = jnp.where(region, c_t - m * jnp.sin(m), value)
    deriv = jnp.where(region, 1.0, deriv)
    d_m = jnp.where(region, -(jnp.sin(m) + m * jnp.cos(m)), d_m)
  elif p.fallback == "easy":
    region = c_t <= 0
    value, deriv = jnp.where(region, c_t, value), jnp.where(region, 1.0, deriv)
    d_m = jnp.where(region, 0.0, d_m)
  aa = jnp.asarray(a).astype(c_t.dtype)
  slope = jnp.where((aa >= p.l_a) & (aa <= p.u_a), (p.u_m - p.l_m) / (p.u_a - p.l_a), 0.0)
  return value, deriv, d_m * slope


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _magface_value(c_t, a, p):
  """MagFace's target value; its gradient reaches the magnitude a (the cosine
  part of the gradient is the head op's f')."""
  return _magface_parts(c_t, a, p)[0]


def _magface_value_fwd(c_t, a, p):
  value, _, d_a = _magface_parts(c_t, a, p)
  return value, (d_a, _checks.dtype_tag(jnp.asarray(a)))


def _magface_value_bwd(p, res, g):
  d_a, a_tag = res
  return jnp.zeros_like(d_a), (g * d_a).astype(a_tag.dtype)


_magface_value.defvjp(_magface_value_fwd, _magface_value_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _magface_g(a, l_a, u_a):
  x = jnp.clip(a, l_a, u_a)
  return 1.0 / x + x / (u_a * u_a)


def _magface_g_fwd(a, l_a, u_a):
  return _magface_g(a, l_a, u_a), a


def _magface_g_bwd(l_a, u_a, a, g):
  # g'(a) = 1/u_a^2 - 1/a^2 inside the clamp, 0 outside (a constant there).
  inside = (a >= l_a) & (a <= u_a)
  return (jnp.where(inside, g * (1.0 / (u_a * u_a) - 1.0 / (a * a)), 0.0),)


_magface_g.defvjp(_magface_g_fwd, _magface_g_bwd)


def magface_regularizer(norms: ArrayLike, *, l_a: float = 10.0,
                        u_a: float = 110.0) -> jax.Array:
  """MagFace's g(a) = 1/a + a/u_a^2 per row, eq. (6), a = clip(||f||, l_a, u_a).

  g is convex with its minimum at a = u_a; the loss adds lambda_g * g(a),
  pushing magnitudes up, against the margin m(a) that grows with a. The
  gradient is g'(a) = 1/u_a^2 - 1/a^2 inside [l_a, u_a] and 0 outside (the
  official code clamps the norm first). Returns [B] in float32 at least.

  >>> round(float(magface_regularizer(jnp.array([110.0]))[0]), 5)
  0.01818
  """
  a = jnp.asarray(norms)
  _checks.check_float("norms", a)
  _checks.check_finite("norms", a)
  _check_bounds(dict(l_a=l_a, u_a=u_a))
  return _magface_g(a.astype(_checks.compute_dtype(a)), float(l_a), float(u_a))


# --------------------------------------------------------------------------
# The one logits op every head shares.


def target_index(labels, num_classes):
  """(valid, safe, drop) [B]: valid rows (0 <= label < C); safe in [0, C) for
  gathers; drop = the label, or C for a row without a target column."""
  valid = (labels >= 0) & (labels < num_classes)
  safe = jnp.clip(labels, 0, num_classes - 1)
  drop = jnp.where(valid, safe, num_classes)
  return valid, safe, drop


def target_cosines(cos, labels):
  """(labels with rows outside [0, C) set to -1, the target cosines [B] float32+)."""
  b, c = cos.shape
  valid, safe, _ = target_index(labels, c)
  return (jnp.where(valid, labels, -1),
          cos[jnp.arange(b), safe].astype(_checks.compute_dtype(cos)))


def _patch(x, cols, values):
  """x with x[i, cols[i]] = values[i]; cols == C (ignored rows) are skipped.

  A select against the column index rather than a scatter: XLA fuses it
  with the elementwise pass that writes x (one pass over [B, C], x's buffer
  reused), where a scatter needs x written first and, in the backward, a
  second [B, C] buffer (benchmarks/ops_margins.py, head_bxc).
  """
  hit = lax.broadcasted_iota(jnp.int32, x.shape, 1) == cols[:, None]
  return jnp.where(hit, values.astype(x.dtype)[:, None], x)


def _pack_bits(mask):
  """[B, C] bool -> [B, ceil(C / 8)] uint8, 8 columns a byte."""
  b, c = mask.shape
  m = jnp.pad(mask, ((0, 0), (0, -c % 8))).reshape(b, -1, 8).astype(jnp.uint8)
  return jnp.sum(m << jnp.arange(8, dtype=jnp.uint8), axis=2, dtype=jnp.uint8)


def _unpack_bits(packed, c):
  """_pack_bits' inverse: [B, C] bool."""
  bits = (packed[:, :, None] >> jnp.arange(8, dtype=jnp.uint8)) & 1
  return bits.reshape(packed.shape[0], -1)[:, :c].astype(bool)


class _RowsOpts(NamedTuple):
  clip_eps: float | None  # non-target cosines clamped to [-1 + eps, 1 - eps] (AdaFace)
  row_grad: bool          # return d loss / d r (EQFace quality, a traced scale)


def _rows_impl(cos, labels, r, value, o: _RowsOpts):
  ct = r.dtype
  _, _, drop = target_index(labels, cos.shape[1])
  x = cos.astype(ct)
  if o.clip_eps is not None:
    x = jnp.clip(x, -1.0 + o.clip_eps, 1.0 - o.clip_eps)
  logits = (x * r[:, None]).astype(cos.dtype)
  return _patch(logits, drop, r * value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _head_rows(cos, labels, r, value, deriv, o):
  """logits_ij = r_i c'_ij, the target entry r_i f_i (d f_i / d cos = deriv_i)."""
  return _rows_impl(cos, labels, r, value, o)


def _head_rows_fwd(cos, labels, r, value, deriv, o):
  logits = _rows_impl(cos, labels, r, value, o)
  # cos itself is kept only for the row-scale gradient; the clamp's mask as
  # bits (1/32 of cos: a bool array would be fused into the backward by XLA,
  # which then keeps cos alive).
  kept = cos if o.row_grad else _checks.dtype_tag(cos)
  packed = None
  if o.clip_eps is not None:
    c = cos.astype(r.dtype)
    packed = _pack_bits((c >= -1.0 + o.clip_eps) & (c <= 1.0 - o.clip_eps))
  return logits, (kept, packed, labels, r, value, deriv, _checks.dtype_tag(cos))


def _head_rows_bwd(o, res, g):
  kept, packed, labels, r, value, deriv, cos_tag = res
  ct = r.dtype
  valid, safe, drop = target_index(labels, g.shape[1])
  g_t = g[jnp.arange(g.shape[0]), safe].astype(ct)
  # Every entry: d logit / d cos = row scale (s, or s_i * S for EQFace),
  # 0 where AdaFace's clamp binds (bounds inside, as torch.clamp's backward).
  d_cos = g.astype(ct) * r[:, None]
  if packed is not None:
    d_cos = jnp.where(_unpack_bits(packed, g.shape[1]), d_cos, 0.0)
  # Target column: r * f'(cos), e.g. s * sin(theta + m) / sin(theta).
  d_cos = _patch(d_cos.astype(cos_tag.dtype), drop, r * g_t * deriv)
  if o.row_grad:
    # d L / d r_i = sum_j g_ij * base_ij, base = margined cosines: the plain
    # sum over the row, corrected at the target entry.
    x = kept.astype(ct)
    if o.clip_eps is not None:
      x = jnp.clip(x, -1.0 + o.clip_eps, 1.0 - o.clip_eps)
    total = jnp.sum(g.astype(ct) * x, axis=1)
    d_r = total + jnp.where(valid, g_t * (value - x[jnp.arange(g.shape[0]), safe]), 0)
  else:
    d_r = jnp.zeros_like(r)
  # The target value's own gradient (MagFace: through m(a) to the magnitude).
  d_value = jnp.where(valid, r * g_t, 0.0).astype(value.dtype)
  return d_cos, None, d_r.astype(r.dtype), d_value, jnp.zeros_like(deriv)


_head_rows.defvjp(_head_rows_fwd, _head_rows_bwd)


# --------------------------------------------------------------------------
# The head specs.


class HeadTerms(NamedTuple):
  """What a head puts in the softmax, per row [B] (float32 at least):

  r: the row scale (non-target logits r_i c'_ij); value: the target value f_i
  (target logit r_i f_i); deriv: d f_i / d cos_iy (1 for straight-through);
  clip_eps: None, or AdaFace's clamp of every cosine; row_grad: whether r
  needs its gradient; new_stats: the statistics update (None: the head keeps
  none); row_loss: a per-row term added to the loss (MagFace's lambda_g g(a))
  or None.
  """
  r: Any
  value: Any
  deriv: Any
  clip_eps: float | None
  row_grad: bool
  new_stats: Any
  row_loss: Any


_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """One margin head, described once.

  name: the registry key. defaults: every keyword the head takes, with its
  default (_REQUIRED: must be given). row_input: the per-row input's name
  ("quality", "norms") or None. keeps_stats: the head carries statistics
  (AdaFace's EMA) that every training step updates. configure(kw) -> static
  params (hashable; checks ranges and option names). terms(c_t, row, stats,
  params, scale, axis_name) -> HeadTerms. check_row(row, b) validates the
  per-row input eagerly. init_stats() -> the initial statistics.
  """
  name: str
  defaults: dict
  row_input: str | None
  keeps_stats: bool
  configure: Callable[[dict], Any]
  terms: Callable[..., HeadTerms]
  check_row: Callable[[Any, int], Any] | None = None
  init_stats: Callable[[], dict] | None = None

  def keywords(self, args: dict) -> dict:
    """The head's keyword arguments picked by name from `args` (a named
    wrapper's locals()), so that the list of names lives here only."""
    return {k: args[k] for k in self.defaults}

  def resolve(self, kw: dict | None) -> tuple[Any, Any]:
    """(static params, scale) from keyword arguments, checked: unknown names,
    missing required ones, option typos and out-of-range values raise."""
    kw = dict(kw or {})
    unknown = sorted(set(kw) - set(self.defaults))
    if unknown:
      raise ValueError(f"head {self.name!r} takes no {unknown}; its keyword arguments are "
                       f"{sorted(self.defaults)}.")
    full = {**self.defaults, **kw}
    missing = sorted(k for k, v in full.items() if v is _REQUIRED)
    if missing:
      raise ValueError(f"head {self.name!r} needs {missing}, e.g. "
                       f"{', '.join(f'{k}=64.0' for k in missing)} (the logit scale s).")
    scale = full.pop("scale")
    _checks.check_scalar_range("scale", scale, 0.0, math.inf, "the logit scale s, e.g. 64",
                               low_open=True)
    return self.configure(full), scale

  def check_inputs(self, labels, b: int, c: int, row=None, stats=None):
    """Eager checks of the labels and the head's own inputs; returns the row
    input reshaped to [B] (None for a head without one)."""
    _checks.check_class_labels("labels", labels, b, c)
    if self.keeps_stats:
      _check_stats(stats)
    if self.row_input is None:
      return None
    if row is None:
      raise ValueError(f"head {self.name!r} needs {self.row_input} [B].")
    return self.check_row(row, b)


def _check_finite_scalars(kw: dict) -> None:
  for k, v in kw.items():
    if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
      raise ValueError(f"{k} must be finite; got {v!r}.")


def _check_options(grad=None, m1_mode=None, fallback=None):
  if grad is not None and grad not in _GRADS:
    raise ValueError(f"grad must be one of {_GRADS}; got {grad!r}.")
  if m1_mode is not None and m1_mode not in _M1_MODES:
    raise ValueError(f"m1_mode must be one of {_M1_MODES}; got {m1_mode!r}.")
  if fallback is not None and fallback not in _FALLBACKS:
    raise ValueError(f"fallback must be one of {_FALLBACKS} or None; got {fallback!r}.")


def _margin_params(kw) -> _Margin:
  m1, m2, m3 = kw["m1"], kw["m2"], kw["m3"]
  _check_finite_scalars(dict(m1=m1, m2=m2, m3=m3))
  _checks.check_scalar_range("m1", m1, 0.0, math.inf, "the multiplicative margin, 1 = none",
                             low_open=True)
  _checks.check_scalar_range("m2", m2, -math.pi, math.pi,
                             "the additive angular margin in radians, e.g. 0.5")
  m1_mode, fallback, grad = kw["m1_mode"], kw["fallback"], kw["grad"]
  _check_options(grad, m1_mode, fallback)
  if fallback is None:
    fallback = "arcface" if m1_mode == "cosine" else "none"
  if fallback == "arcface" and m1_mode == "angle":
    raise ValueError(
        "fallback='arcface' is defined for m1_mode='cosine' only (theta + m2 > pi); "
        "with m1_mode='angle' use fallback='none' (insightface's combined margin has "
        "no fallback) or 'easy'.")
  return _Margin(float(m1), float(m2), float(m3), m1_mode, fallback, grad)


class _EQ(NamedTuple):
  margin: _Margin
  official: bool


def _eqface_params(kw) -> _EQ:
  transform = kw.pop("quality_transform")
  if transform not in ("paper", "official"):
    raise ValueError(f"quality_transform must be 'paper' or 'official'; got {transform!r}.")
  return _EQ(_margin_params(kw), transform == "official")


class _Ada(NamedTuple):
  m: float
  h: float
  t_alpha: float
  eps: float


def _adaface_params(kw) -> _Ada:
  _check_finite_scalars(kw)
  _checks.check_scalar_range("m", kw["m"], 0.0, math.pi / 2, "AdaFace's margin, e.g. 0.4")
  _checks.check_scalar_range("h", kw["h"], 0.0, math.inf, "the norm scaler's h, e.g. 0.333",
                             low_open=True)
  _checks.check_scalar_range("t_alpha", kw["t_alpha"], 0.0, 1.0,
                             "the EMA weight of the batch, e.g. 0.01")
  _checks.check_scalar_range("eps", kw["eps"], 0.0, 0.5, "the clamp epsilon, e.g. 1e-3",
                             low_open=True)
  return _Ada(float(kw["m"]), float(kw["h"]), float(kw["t_alpha"]), float(kw["eps"]))


def _check_bounds(kw) -> None:
  _check_finite_scalars(kw)
  if not 0.0 < kw["l_a"] < kw["u_a"]:
    raise ValueError(f"MagFace needs 0 < l_a < u_a (the magnitude range, e.g. 10, 110); "
                     f"got l_a={kw['l_a']!r}, u_a={kw['u_a']!r}.")


def _magface_params(kw) -> _Mag:
  _check_bounds(kw)
  if not 0.0 <= kw["l_m"] <= kw["u_m"] < math.pi:
    raise ValueError(f"MagFace needs 0 <= l_m <= u_m < pi (the margin range in radians, "
                     f"e.g. 0.45, 0.8); got l_m={kw['l_m']!r}, u_m={kw['u_m']!r}.")
  _checks.check_scalar_range("lambda_g", kw["lambda_g"], 0.0, math.inf,
                             "the regulariser's weight, e.g. 35")
  _check_options(kw["grad"], None, kw["fallback"])
  if kw["fallback"] not in ("arcface", "easy"):
    raise ValueError(f"MagFace's fallback must be 'arcface' or 'easy'; got {kw['fallback']!r}.")
  return (_Mag(float(kw["l_a"]), float(kw["u_a"]), float(kw["l_m"]), float(kw["u_m"]),
               kw["fallback"], kw["grad"]), float(kw["lambda_g"]))


def _check_row(name, what, non_negative):
  def check(row, b):
    if jnp.ndim(row) == 2:
      _checks.check_shape(name, row, (b, 1), what)
      row = jnp.reshape(row, (b,))
    _checks.check_shape(name, row, (b,), what)
    _checks.check_float(name, row)
    _checks.check_finite(name, row)
    if non_negative and _checks.is_concrete(row) and b:
      # numpy, not jnp: a concrete array closed over inside jit would be traced.
      low = float(np.min(np.asarray(row)))
      if low < 0:
        raise ValueError(f"{name} must be >= 0 (they are ||z_i||); got min {low:g}. "
                         "Pass jnp.linalg.norm(embeddings, axis=-1).")
    return row
  return check


def _check_stats(stats) -> None:
  if not isinstance(stats, dict) or set(stats) != {"mean", "std"}:
    raise ValueError("stats must be a dict {'mean', 'std'}; start from adaface_init_stats().")
  _checks.check_finite("stats['mean']", stats["mean"])
  _checks.check_finite("stats['std']", stats["std"])


def _slope(p, deriv):
  return deriv if p.grad == "exact" else jnp.ones_like(deriv)


def _margin_terms(c_t, row, stats, p, scale, axis_name):
  del row, stats, axis_name
  value, deriv = _target_margin(c_t, p)
  r = jnp.full(c_t.shape, scale, c_t.dtype)
  return HeadTerms(r, value, _slope(p, deriv), None, False, None, None)


def _eqface_terms(c_t, quality, stats, p: _EQ, scale, axis_name):
  del stats, axis_name
  value, deriv = _target_margin(c_t, p.margin)
  q = jnp.asarray(quality).astype(c_t.dtype)
  if p.official:
    q = jnp.clip(q - 0.2, 0.0, 1.0) * 1.2
  return HeadTerms(scale * q, value, _slope(p.margin, deriv), None, True, None, None)


def _adaface_terms(c_t, norms, stats, p: _Ada, scale, axis_name):
  norms, mean, std = _ema(norms, stats, p.t_alpha, axis_name)
  new_stats = {"mean": mean.astype(jnp.asarray(stats["mean"]).dtype),
               "std": std.astype(jnp.asarray(stats["std"]).dtype)}
  z = adaface_norm_scaler(norms, mean, std, h=p.h, eps=p.eps)
  z = lax.stop_gradient(z.astype(c_t.dtype))  # norms are stop-gradient in AdaFace
  value = _adaface_target(c_t, z, p.m, p.eps)
  deriv = adaface_gradient_scaling_term(c_t, z, p.m, p.eps)
  r = jnp.full(c_t.shape, scale, c_t.dtype)
  return HeadTerms(r, value, deriv, p.eps, False, new_stats, None)


def _magface_terms(c_t, norms, stats, params, scale, axis_name):
  del stats, axis_name
  p, lambda_g = params
  a = jnp.asarray(norms).astype(c_t.dtype)
  value = _magface_value(c_t, a, p)
  _, deriv, _ = _magface_parts(c_t, lax.stop_gradient(a), p)
  r = jnp.full(c_t.shape, scale, c_t.dtype)
  row_loss = lambda_g * _magface_g(a, p.l_a, p.u_a)
  return HeadTerms(r, value, _slope(p, deriv), None, False, None, row_loss)


_MARGIN_DEFAULTS = dict(scale=_REQUIRED, m1=1.0, m2=0.0, m3=0.0, grad="exact",
                        m1_mode="cosine", fallback=None)
_NORMS = "[batch] or [batch, 1] embedding norms"

HEADS: dict[str, HeadSpec] = {
    "margin": HeadSpec("margin", _MARGIN_DEFAULTS, None, False, _margin_params,
                       _margin_terms),
    "eqface": HeadSpec("eqface", {**_MARGIN_DEFAULTS, "m2": 0.5, "quality_transform": "paper"},
                       "quality", False, _eqface_params, _eqface_terms,
                       _check_row("quality", "[batch] quality scores s_i", False)),
    "adaface": HeadSpec("adaface", dict(scale=64.0, m=0.4, h=0.333, t_alpha=0.01, eps=1e-3),
                        "norms", True, _adaface_params, _adaface_terms,
                        _check_row("norms", _NORMS, True), adaface_init_stats),
    "magface": HeadSpec("magface", dict(scale=64.0, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8,
                                        lambda_g=35.0, fallback="arcface", grad="exact"),
                        "norms", False, _magface_params, _magface_terms,
                        _check_row("norms", _NORMS, True)),
}


def register_head(spec: HeadSpec) -> None:
  """Adds a margin head to HEADS: every entry point (logits, fused
  cross-entropy, Partial FC, the Flax SpecHead) then runs it by name
  (docs/adding_a_method.md, a margin head)."""
  if spec.name in HEADS and HEADS[spec.name] is not spec:
    raise ValueError(f"head {spec.name!r} is already registered; pick another name.")
  HEADS[spec.name] = spec


def head_spec(name: str) -> HeadSpec:
  """The registered head `name` (one of HEADS)."""
  if name not in HEADS:
    raise ValueError(f"head must be one of {tuple(HEADS)}; got {name!r}.")
  return HEADS[name]


# --------------------------------------------------------------------------
# The public logits functions.


def check_cosines(cos) -> None:
  """cos [B, C] float, finite and within [-1, 1] up to rounding (eagerly)."""
  _checks.check_shape("cos", cos, (None, None), "[batch, num_classes] cosines")
  _checks.check_float("cos", cos)
  _checks.check_finite("cos", cos)
  if _checks.is_concrete(cos) and cos.size:
    worst = float(np.max(np.abs(np.asarray(cos))))
    if worst > 1 + COS_RANGE_TOL:
      raise ValueError(
          f"cos holds values outside [-1, 1] (max |cos| = {worst:g}): these are not "
          "cosines. L2-normalise the embeddings and the class weights before the "
          "matmul (rounding slightly past +-1 is fine).")


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _logits_step(name, params, row_grad, axis_name, cos, labels, row, stats, scale):
  spec = HEADS[name]
  ct = _checks.compute_dtype(cos)
  labels, c_t = target_cosines(cos, labels)
  terms = spec.terms(lax.stop_gradient(c_t), row, stats, params, jnp.asarray(scale, ct),
                     axis_name)
  r = terms.r.astype(ct)
  o = _RowsOpts(terms.clip_eps, terms.row_grad or row_grad)
  logits = _head_rows(cos, labels, r, terms.value.astype(ct),
                      lax.stop_gradient(terms.deriv.astype(ct)), o)
  return logits, terms.new_stats, terms.row_loss


def head_logits(head: str, cos: ArrayLike, labels: ArrayLike, *, row: ArrayLike | None = None,
                stats: dict | None = None, axis_name=None, **kw):
  """Margin logits [B, C] of the registered head `head` (HEADS), checked.

  row: the head's per-row input (EQFace's quality, AdaFace's / MagFace's
  norms) [B] or [B, 1]; stats: AdaFace's statistics; kw: the head's
  keyword arguments. Returns (logits [B, C] in cos.dtype, new_stats or None,
  row_loss [B] or None).
  """
  spec = head_spec(head)
  check_cosines(cos)
  b, c = cos.shape
  row = spec.check_inputs(labels, b, c, row, stats)
  params, scale = spec.resolve(kw)
  # A traced scale needs its gradient (the row-scale gradient); a Python
  # float does not, and then cos is not kept for the backward.
  traced = isinstance(scale, jax.core.Tracer)
  return _logits_step(head, params, traced, axis_name, cos, labels, row, stats, scale)


def margin_logits(cos: ArrayLike, labels: ArrayLike, *, scale: float, m1: float = 1.0,
                  m2: float = 0.0, m3: float = 0.0, grad: str = "exact",
                  m1_mode: str = "cosine", fallback: str | None = None) -> jax.Array:
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

  >>> cos = jnp.array([[0.5, 0.2]])
  >>> margin_logits(cos, jnp.array([0]), scale=10.0, m3=0.1).tolist()
  [[4.0, 2.0]]
  """
  return head_logits("margin", cos, labels, **HEADS["margin"].keywords(locals()))[0]


def eqface_logits(cos: ArrayLike, labels: ArrayLike, quality: ArrayLike, *, scale: float,
                  m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                  quality_transform: str = "paper", grad: str = "exact",
                  m1_mode: str = "cosine", fallback: str | None = None) -> jax.Array:
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
    quality: [B] (or [B, 1]) quality scores s_i, nominally in [0, 1].
    scale: S, the fixed scale (the EQFace code uses 64).
    quality_transform: "paper" or "official" (see above).

  Returns:
    [B, C] logits in cos.dtype.

  Degenerate input: s_i = 0 gives a zero row (uniform softmax) whose cos
  gradient is zero while dL/ds_i stays finite. Eagerly, NaN/Inf in cos or
  quality and labels >= C raise ValueError.

  >>> cos = jnp.array([[0.5, 0.2]])
  >>> eqface_logits(cos, jnp.array([0]), jnp.array([0.5]), scale=10.0, m2=0.0).tolist()
  [[2.5, 1.0]]
  """
  return head_logits("eqface", cos, labels, row=quality, **HEADS["eqface"].keywords(locals()))[0]


def adaface_logits(cos: ArrayLike, norms: ArrayLike, labels: ArrayLike, stats: dict, *,
                   m: float = 0.4, h: float = 0.333, scale: float = 64.0,
                   t_alpha: float = 0.01, eps: float = 1e-3,
                   axis_name=None) -> tuple[jax.Array, dict]:
  """AdaFace eq. (8)-(10) logits with the official head's conventions.

  Steps (docs/conventions.md, AdaFace; the official head): norms ||z_i|| are stop-gradient and
  clipped to [0.001, 100]; the batch mean and UNBIASED (N - 1) std of the
  norms update the EMA first (`adaface_update_stats`),
  mean <- t_alpha*batch_mean + (1 - t_alpha)*mean (std alike), and the
  updated values are used: z_hat = clip(h*(norm -
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

  >>> cos = jnp.array([[0.5, 0.2], [0.1, 0.3]])
  >>> logits, new = adaface_logits(cos, jnp.array([20.0, 20.0]), jnp.array([0, 1]),
  ...                              adaface_init_stats())
  >>> logits.shape, float(new["mean"])
  ((2, 2), 20.0)
  """
  kw = HEADS["adaface"].keywords(locals())
  logits, new_stats, _ = head_logits("adaface", cos, labels, row=norms, stats=stats,
                                     axis_name=axis_name, **kw)
  return logits, new_stats


def magface_logits(cos: ArrayLike, norms: ArrayLike, labels: ArrayLike, *,
                   scale: float = 64.0, l_a: float = 10.0, u_a: float = 110.0,
                   l_m: float = 0.45, u_m: float = 0.8, lambda_g: float = 35.0,
                   fallback: str = "arcface",
                   grad: str = "exact") -> tuple[jax.Array, jax.Array]:
  """MagFace (Meng et al., CVPR 2021) eq. (5)-(7): (logits [B, C], lambda_g g(a) [B]).

  The magnitude a_i = ||f_i|| (clipped to [l_a, u_a]) sets row i's ArcFace
  margin m(a_i) = l_m + (u_m - l_m)(a_i - l_a)/(u_a - l_a)
  (`magface_margin`): target s*cos(theta + m(a)), other entries s*cos(theta_j).
  The loss is the softmax cross-entropy of the logits plus the regulariser
  lambda_g * g(a_i), g(a) = 1/a + a/u_a^2 (`magface_regularizer`), averaged
  over the batch as the official loss. Unlike AdaFace, the norms are NOT
  stop-gradient: the target logit's gradient reaches a through m(a),
  d logit / d a = -s sin(theta + m) m'(a), which with g drives the magnitude
  (the paper's convergence argument).

  Args:
    cos: [B, C] cosines; norms: [B] or [B, 1] feature magnitudes ||f_i||.
    labels: [B] int, < 0 = ignore the row (no margin; mask its loss).
    scale: s (64); l_a, u_a (10, 110), l_m, u_m (0.45, 0.8), lambda_g (35):
      the official code's defaults.
    fallback: "arcface" (the official code's cos - m sin m where
      theta + m > pi) or "easy" (its easy_margin option).
    grad: "exact" or "straight_through" (the cosine gradient only; the
      magnitude's gradient is always exact).

  Returns:
    (logits [B, C] in cos.dtype, lambda_g * g(a) [B] in float32 at least).

  >>> cos = jnp.array([[0.5, 0.2]])
  >>> logits, reg = magface_logits(cos, jnp.array([110.0]), jnp.array([0]), scale=1.0)
  >>> round(float(logits[0, 0]), 4), round(float(reg[0]), 4)
  (-0.2729, 0.6364)
  """
  kw = HEADS["magface"].keywords(locals())
  logits, _, row_loss = head_logits("magface", cos, labels, row=norms, **kw)
  return logits, row_loss
