"""Gradient checks for the margin heads (jaxset/ops/margins.py).

References are plain-jnp forwards over the whole [B, C] matrix with a one-hot
select (no custom_vjp, no scatter), so autodiff of them is an independent
check of the custom backward. `paper_grad` writes docs/conventions.md's
formulas out by hand:

* exact combined margin: dL/dcos_ij = s * g_ij, times f'(cos) at the target,
  f' = m1*sin(theta + m2)/sin(theta) ("cosine" mode, ArcFace: the factor
  sin(theta + m)/sin(theta)) or m1*sin(m1*theta + m2)/sin(theta) ("angle");
* straight-through: dL/dcos = s * g everywhere;
* EQFace loss (6): dL/dcos_ij = s_i*S*g_ij (times f' at the target),
  dL/ds_i = S * sum_j g_ij * base_ij;
* AdaFace: target column s * g * GST with
  GST = cos(g_angle) + cos(theta)*sin(g_angle)/sqrt(1 - cos^2(theta)),
  g_angle = -m*z_hat; other columns s * g.
* MagFace (eq. (5)-(7)): the target is s*cos(theta + m(a)),
  m(a) = l_m + (u_m - l_m)(a - l_a)/(u_a - l_a) on a in [l_a, u_a]:
  dL/dcos = s*g*sin(theta + m)/sin(theta) at the target, and the magnitude
  gets dL/da = -s*g_y*sin(theta + m)*m'(a) + lambda_g*g_reg*(1/u_a^2 - 1/a^2),
  m'(a) = (u_m - l_m)/(u_a - l_a) inside [l_a, u_a] and 0 outside (where the
  ArcFace fallback cos - m sin m applies: d/dm = -(sin m + m cos m)).

Cosines are mostly drawn in [-0.9, 0.9] (away from +-1, where finite
differences of arccos lose meaning). The ArcFace fallback starts at
cos(pi - 0.5) = -0.878, inside that range, so the written-out factor covers
it (m1 there; ArcFace's easy margin: the margin without m2 where cos <= 0).
Boundary cases put cosines where the formulas change on purpose: the ArcFace
fallback region, AdaFace's clamps (|cos| > 1 - eps, and theta + g_angle
outside [eps, pi - eps]) and EQFace's official clamp (quality below 0.2).

Straight-through is, by design, not the derivative of its forward, so finite
differences of the raw op cannot match it. Its case checks
`st(cos) - stop_gradient(st(cos) - s*cos)`: the same backward (the subtracted
term carries none), with a forward (s*cos) whose true derivative is what
straight-through claims, so the finite-difference and check_grads rows test
the straight-through backward. tests/test_ops_margins.py checks the raw
straight-through op against its stop-gradient reference as well.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxset.gradcheck import GradCase
from jaxset.ops import margins

_B, _C = 4, 5


def _labels(rng, b=_B, c=_C, ignore=True):
  labels = rng.integers(0, c, b)
  if ignore:
    labels[-1] = -1
  return labels


def _cos(rng, b=_B, c=_C):
  return rng.uniform(-0.9, 0.9, (b, c))


def _one_hot(labels, c):
  return (labels[:, None] == jnp.arange(c)[None, :]) & (labels[:, None] >= 0)


# --------------------------------------------------------------------------
# Plain references (full matrix, one-hot select, autodiff).


def _resolve_fallback(fallback, m1_mode):
  """The op's default: "arcface" for m1_mode="cosine", "none" for "angle"."""
  if fallback is None:
    return "arcface" if m1_mode == "cosine" else "none"
  return fallback


def reference_margin_base(cos, labels, *, m1=1.0, m2=0.0, m3=0.0, m1_mode="cosine",
                          fallback=None):
  """Combined-margin cosines (before the scale), plain jnp over every entry."""
  fallback = _resolve_fallback(fallback, m1_mode)
  theta = jnp.arccos(cos)
  if m1_mode == "cosine":
    phi = m1 * jnp.cos(theta + m2) - m3
  else:
    phi = jnp.cos(m1 * theta + m2) - m3
  if fallback == "arcface" and m2 > 0:
    phi = jnp.where(cos <= math.cos(math.pi - m2), m1 * (cos - m2 * math.sin(m2)) - m3, phi)
  elif fallback == "easy":
    easy = m1 * cos - m3 if m1_mode == "cosine" else jnp.cos(m1 * theta) - m3
    phi = jnp.where(cos <= 0, easy, phi)
  return jnp.where(_one_hot(labels, cos.shape[1]), phi, cos)


def reference_margin_logits(cos, *, labels, scale, grad="exact", **margin):
  base = reference_margin_base(cos, labels, **margin)
  if grad == "straight_through":
    # The margin as a constant added to cos: autodiff gives s * g.
    base = cos + jax.lax.stop_gradient(base - cos)
  return scale * base


def reference_eqface_logits(cos, quality, *, labels, scale, quality_transform="paper",
                            grad="exact", **margin):
  base = reference_margin_base(cos, labels, **margin)
  if grad == "straight_through":
    base = cos + jax.lax.stop_gradient(base - cos)
  q = quality if quality_transform == "paper" else jnp.clip(quality - 0.2, 0.0, 1.0) * 1.2
  return scale * q[:, None] * base


def reference_adaface_logits(cos, *, norms, labels, stats, m=0.4, h=0.333, scale=64.0,
                             t_alpha=0.01, eps=1e-3):
  """The official head, line by line, over the whole matrix."""
  norms = jax.lax.stop_gradient(jnp.clip(norms, 0.001, 100.0))
  mean_b = jnp.mean(norms)
  std_b = jnp.std(norms, ddof=1)
  mean = t_alpha * mean_b + (1 - t_alpha) * stats["mean"]
  std = t_alpha * std_b + (1 - t_alpha) * stats["std"]
  z = jnp.clip(h * (norms - mean) / (std + eps), -1, 1)
  one_hot = _one_hot(labels, cos.shape[1])
  cos = jnp.clip(cos, -1 + eps, 1 - eps)
  theta = jnp.arccos(cos) + jnp.where(one_hot, -m * z[:, None], 0)
  theta = jnp.clip(theta, eps, math.pi - eps)
  logits = jnp.cos(theta) - jnp.where(one_hot, m * z[:, None] + m, 0)
  return scale * logits, {"mean": mean, "std": std}


def reference_magface_logits(cos, norms, *, labels, scale=64.0, l_a=10.0, u_a=110.0,
                             l_m=0.45, u_m=0.8, lambda_g=35.0, fallback="arcface"):
  """MagFace's head and regulariser, plain jnp over the whole matrix
  (differentiable in the norms, as the official code)."""
  a = jnp.clip(norms, l_a, u_a)
  m = (l_m + (u_m - l_m) * (a - l_a) / (u_a - l_a))[:, None]
  target = jnp.cos(jnp.arccos(cos) + m)
  if fallback == "arcface":
    target = jnp.where(cos > jnp.cos(math.pi - m), target, cos - m * jnp.sin(m))
  else:
    target = jnp.where(cos > 0, target, cos)
  logits = scale * jnp.where(_one_hot(labels, cos.shape[1]), target, cos)
  return logits, lambda_g * (1.0 / a + a / u_a ** 2)


# --------------------------------------------------------------------------
# The papers' gradients, written out.


def paper_margin_factor(cos_t, *, m1=1.0, m2=0.0, m1_mode="cosine"):
  """d target / d cos: m1*sin(theta + m2)/sin(theta) or m1*sin(m1*theta + m2)/sin(theta)."""
  theta = jnp.arccos(cos_t)
  arg = theta + m2 if m1_mode == "cosine" else m1 * theta + m2
  return m1 * jnp.sin(arg) / jnp.sin(theta)


def paper_fallback_factor(cos_t, factor, *, m1=1.0, m2=0.0, m1_mode="cosine",
                          fallback=None):
  """`factor` with the fallback regions' derivatives swapped in.

  ArcFace fallback (cos <= cos(pi - m2), m2 > 0): d/dcos m1*(cos - m2 sin m2) = m1.
  Easy margin (cos <= 0): m1 ("cosine") or m1*sin(m1*theta)/sin(theta) ("angle").
  """
  fallback = _resolve_fallback(fallback, m1_mode)
  if fallback == "arcface" and m2 > 0:
    return jnp.where(cos_t <= math.cos(math.pi - m2), m1, factor)
  if fallback == "easy":
    easy = m1 if m1_mode == "cosine" else paper_margin_factor(
        cos_t, m1=m1, m2=0.0, m1_mode="angle")
    return jnp.where(cos_t <= 0, easy, factor)
  return factor


def _target_factor(cos, labels, margin):
  one_hot = _one_hot(labels, cos.shape[1])
  kw = dict(m1=margin.get("m1", 1.0), m2=margin.get("m2", 0.0),
            m1_mode=margin.get("m1_mode", "cosine"))
  factor = paper_margin_factor(cos, **kw)
  factor = paper_fallback_factor(cos, factor, fallback=margin.get("fallback"), **kw)
  return jnp.where(one_hot, factor, 1.0)


def paper_margin_grad(args, fixed, cot):
  (cos,) = args
  fixed = dict(fixed)
  labels, scale, grad = fixed.pop("labels"), fixed.pop("scale"), fixed.pop("grad", "exact")
  if grad == "straight_through":
    return (scale * cot,)
  return (scale * cot * _target_factor(cos, labels, fixed),)


def paper_eqface_grad(args, fixed, cot):
  cos, quality = args
  fixed = dict(fixed)
  labels, scale = fixed.pop("labels"), fixed.pop("scale")
  grad = fixed.pop("grad", "exact")
  transform = fixed.pop("quality_transform", "paper")
  if transform == "paper":
    r, dr_dq = quality, jnp.ones_like(quality)
  else:
    r = jnp.clip(quality - 0.2, 0.0, 1.0) * 1.2
    dr_dq = jnp.where((quality > 0.2) & (quality < 1.2), 1.2, 0.0)
  factor = 1.0 if grad == "straight_through" else _target_factor(cos, labels, fixed)
  d_cos = scale * r[:, None] * cot * factor
  base = reference_margin_base(cos, labels, **fixed)
  d_quality = scale * dr_dq * jnp.sum(cot * base, axis=1)  # EQFace: S * sum_j g_ij base_ij
  return d_cos, d_quality


def paper_adaface_gst(cos_t, z_hat, m):
  """AdaFace's GST factor: cos(g) + cos(theta) sin(g) / sqrt(1 - cos^2 theta), g = -m z."""
  g = -m * z_hat
  return jnp.cos(g) + cos_t * jnp.sin(g) / jnp.sqrt(1 - cos_t ** 2)


def paper_adaface_grad(args, fixed, cot):
  """s * g * GST at the target, s * g elsewhere; 0 wherever a clamp binds.

  The official head clamps cos to [-1 + eps, 1 - eps] (every entry) and the
  target angle theta + g_angle to [eps, pi - eps]: a clamped value is
  constant, so its derivative is 0 (torch.clamp's backward; bounds count as
  inside).
  """
  (cos,) = args
  logits_cot, _ = cot
  _, new = reference_adaface_logits(cos, **fixed)
  m, h, eps = fixed.get("m", 0.4), fixed.get("h", 0.333), fixed.get("eps", 1e-3)
  norms = jnp.clip(fixed["norms"], 0.001, 100.0)
  z = jnp.clip(h * (norms - new["mean"]) / (new["std"] + eps), -1, 1)[:, None]
  one_hot = _one_hot(fixed["labels"], cos.shape[1])
  inside = (cos >= -1 + eps) & (cos <= 1 - eps)
  theta_m = jnp.arccos(jnp.clip(cos, -1 + eps, 1 - eps)) - m * z
  angle_inside = (theta_m >= eps) & (theta_m <= math.pi - eps)
  safe = jnp.where(inside, cos, 0.0)
  gst = jnp.where(angle_inside, paper_adaface_gst(safe, z, m), 0.0)
  factor = jnp.where(inside, jnp.where(one_hot, gst, 1.0), 0.0)
  return (fixed.get("scale", 64.0) * logits_cot * factor,)


def paper_magface_grad(args, fixed, cot):
  """MagFace eq. (5)-(7) differentiated by hand (see the module doc)."""
  cos, norms = args
  g, g_reg = cot
  scale, lambda_g = fixed.get("scale", 64.0), fixed.get("lambda_g", 35.0)
  l_a, u_a = fixed.get("l_a", 10.0), fixed.get("u_a", 110.0)
  l_m, u_m = fixed.get("l_m", 0.45), fixed.get("u_m", 0.8)
  inside = (norms >= l_a) & (norms <= u_a)
  a = jnp.clip(norms, l_a, u_a)
  m = l_m + (u_m - l_m) * (a - l_a) / (u_a - l_a)
  one_hot = _one_hot(fixed["labels"], cos.shape[1])
  c_t = jnp.sum(jnp.where(one_hot, cos, 0.0), axis=1)
  theta = jnp.arccos(c_t)
  if fixed.get("fallback", "arcface") == "arcface":
    margin_side = c_t > jnp.cos(math.pi - m)
    fall_dm = -(jnp.sin(m) + m * jnp.cos(m))
  else:
    margin_side = c_t > 0
    fall_dm = jnp.zeros_like(m)
  factor = jnp.where(margin_side, jnp.sin(theta + m) / jnp.sin(theta), 1.0)
  d_m = jnp.where(margin_side, -jnp.sin(theta + m), fall_dm)
  labelled = jnp.asarray(fixed["labels"]) >= 0
  d_cos = scale * g * jnp.where(one_hot, factor[:, None], 1.0)
  g_t = jnp.sum(jnp.where(one_hot, g, 0.0), axis=1)
  slope = jnp.where(inside, (u_m - l_m) / (u_a - l_a), 0.0)
  d_reg = jnp.where(inside, 1.0 / u_a ** 2 - 1.0 / norms ** 2, 0.0)
  d_a = jnp.where(labelled, scale * g_t * d_m * slope, 0.0) + lambda_g * g_reg * d_reg
  return d_cos, d_a


# --------------------------------------------------------------------------
# Cases.


def _frozen_straight_through(fn, scale):
  """st(cos) - stop_gradient(st(cos) - s*cos): see the module docstring."""
  def wrapped(cos, **fixed):
    out = fn(cos, **fixed)
    return out - jax.lax.stop_gradient(out - scale * cos)
  return wrapped


def _margin_op(cos, *, labels, **kw):
  return margins.margin_logits(cos, labels, **kw)


def _eqface_op(cos, quality, *, labels, **kw):
  return margins.eqface_logits(cos, labels, quality, **kw)


def _adaface_op(cos, *, norms, labels, stats, **kw):
  return margins.adaface_logits(cos, norms, labels, stats, **kw)


def _magface_op(cos, norms, *, labels, **kw):
  return margins.magface_logits(cos, norms, labels, **kw)


def _magface_case(name, eq, norms, targets=None, **kw):
  """MagFace on norms spanning the clamp ([l_a, u_a] = [10, 110]): rows
  inside get m'(a), rows outside 0; targets (lo, hi) puts the labelled
  rows' target cosines there (e.g. the ArcFace fallback region)."""
  def make(rng):
    labels = _labels(rng)
    cos = _cos(rng)
    if targets is not None:
      cos = _with_targets(rng, cos, labels, *targets)
    return ((cos, np.asarray(norms, np.float64)),
            {"labels": jnp.asarray(labels), "scale": 16.0, **kw})
  return GradCase(name=name, fn=_magface_op, reference=reference_magface_logits,
                  paper_grad=paper_magface_grad, make=make, paper_eq=eq)


def _margin_case(name, eq, **margin):
  def make(rng):
    return (_cos(rng),), {"labels": jnp.asarray(_labels(rng)), "scale": 16.0, **margin}
  return GradCase(name=name, fn=_margin_op, reference=reference_margin_logits,
                  paper_grad=paper_margin_grad, make=make, paper_eq=eq)


def cases() -> list[GradCase]:
  out = [
      _margin_case("margin_logits[arcface exact]", "s*sin(t+m)/sin(t)", m2=0.5),
      _margin_case("margin_logits[cosface]", "s*g", m3=0.35),
      _margin_case("margin_logits[sphereface angle]", "s*m1*sin(m1 t)/sin(t)",
                   m1=1.35, m1_mode="angle"),
      _margin_case("margin_logits[combined cosine]", "s*m1*sin(t+m2)/sin(t)",
                   m1=0.9, m2=0.3, m3=0.2),
      _margin_case("margin_logits[combined angle]", "s*m1*sin(m1 t+m2)/sin(t)",
                   m1=1.1, m2=0.2, m3=0.15, m1_mode="angle"),
  ]

  def make_st(rng):
    return (_cos(rng),), {"labels": jnp.asarray(_labels(rng)), "scale": 16.0, "m2": 0.5,
                          "grad": "straight_through"}
  out.append(GradCase(
      name="margin_logits[arcface straight]",
      fn=_frozen_straight_through(_margin_op, 16.0),
      reference=_frozen_straight_through(reference_margin_logits, 16.0),
      paper_grad=paper_margin_grad, make=make_st, paper_eq="s*g"))

  for transform, lo, hi in (("paper", 0.05, 1.0), ("official", 0.25, 0.95)):
    def make_eq(rng, transform=transform, lo=lo, hi=hi):
      return ((_cos(rng), rng.uniform(lo, hi, _B)),
              {"labels": jnp.asarray(_labels(rng)), "scale": 16.0, "m2": 0.5,
               "quality_transform": transform})
    out.append(GradCase(
        name=f"eqface_logits[{transform}]", fn=_eqface_op,
        reference=reference_eqface_logits, paper_grad=paper_eqface_grad, make=make_eq,
        paper_eq="dL/ds_i = S sum_j g_ij base_ij"))

  def make_ada(rng):
    # Norms spread so that z_hat is inside (-1, 1) for some rows and clipped
    # for others; stats chosen so that both happen.
    norms = jnp.asarray([5.0, 19.0, 21.0, 60.0])
    stats = {"mean": jnp.asarray(20.0), "std": jnp.asarray(6.0)}
    return (_cos(rng),), {"norms": norms, "labels": jnp.asarray(_labels(rng)),
                          "stats": stats, "m": 0.4, "scale": 16.0}
  out.append(GradCase(
      name="adaface_logits", fn=_adaface_op, reference=reference_adaface_logits,
      paper_grad=paper_adaface_grad, make=make_ada,
      paper_eq="GST cos(g)+c sin(g)/sqrt(1-c^2)"))
  out.append(_magface_case("magface_logits", "-s sin(t+m) m'(a) + g'(a)",
                           [25.0, 60.0, 104.0, 40.0]))
  out.extend(_boundary_cases())
  return out


def _with_targets(rng, cos, labels, lo, hi):
  """cos with each labelled row's target drawn from [lo, hi]."""
  cos = np.array(cos)
  rows = np.nonzero(labels >= 0)[0]
  cos[rows, labels[rows]] = rng.uniform(lo, hi, len(rows))
  return cos


def _boundary_cases() -> list[GradCase]:
  """Inputs inside the regions where the formulas switch (see the module doc)."""
  m2 = 0.5
  edge = math.cos(math.pi - m2)  # -0.8776: the ArcFace fallback starts here

  def make_fallback(rng, **margin):
    labels = _labels(rng)
    # Half the targets beyond the fallback edge, half on the margin side.
    cos = _with_targets(rng, _cos(rng), labels, -0.99, edge - 0.01)
    cos[0, labels[0]] = rng.uniform(edge + 0.01, 0.9)
    return (cos,), {"labels": jnp.asarray(labels), "scale": 16.0, **margin}

  out = [GradCase(
      name="margin_logits[arcface fallback]", fn=_margin_op,
      reference=reference_margin_logits, paper_grad=paper_margin_grad,
      make=lambda rng: make_fallback(rng, m2=m2, m1=1.1, m3=0.1),
      paper_eq="s*m1 where cos <= cos(pi-m2)")]

  for mode, m1 in (("cosine", 1.1), ("angle", 1.2)):
    def make_easy(rng, mode=mode, m1=m1):
      labels = _labels(rng)
      cos = _with_targets(rng, _cos(rng), labels, -0.9, -0.05)
      cos[0, labels[0]] = rng.uniform(0.05, 0.9)
      return (cos,), {"labels": jnp.asarray(labels), "scale": 16.0, "m1": m1, "m2": 0.3,
                      "m3": 0.1, "m1_mode": mode, "fallback": "easy"}
    out.append(GradCase(
        name=f"margin_logits[easy {mode}]", fn=_margin_op,
        reference=reference_margin_logits, paper_grad=paper_margin_grad, make=make_easy,
        paper_eq="no m2 where cos <= 0"))

  def make_eq_clamp(rng):
    # Official transform S*clamp(s - 0.2, 0, 1)*1.2: rows below 0.2 are clamped.
    quality = np.concatenate([rng.uniform(0.0, 0.19, 2), rng.uniform(0.21, 0.95, 2)])
    labels = _labels(rng)
    cos = _with_targets(rng, _cos(rng), labels, -0.99, 0.9)
    return ((cos, quality), {"labels": jnp.asarray(labels), "scale": 16.0, "m2": m2,
                             "quality_transform": "official"})
  out.append(GradCase(
      name="eqface_logits[official clamp]", fn=_eqface_op,
      reference=reference_eqface_logits, paper_grad=paper_eqface_grad, make=make_eq_clamp,
      paper_eq="dL/ds_i = 0 where s_i < 0.2"))

  def make_ada_clamp(rng):
    eps = 1e-3
    # Rows 0, 1: z_hat = +1 (large norms); rows 2, 3: z_hat = -1 (small norms).
    norms = jnp.asarray([90.0, 80.0, 0.5, 1.0])
    stats = {"mean": jnp.asarray(20.0), "std": jnp.asarray(6.0)}
    labels = rng.integers(0, _C, _B)
    cos = _cos(rng)
    # Every entry's cosine clamp: values within eps of +-1.
    cos[:, -1] = rng.choice([-1.0, 1.0], _B) * rng.uniform(1 - eps / 2, 1.0, _B)
    # Target-angle clamp: z = +1 needs theta < m + eps (cos > 0.92); z = -1
    # needs theta > pi - m - eps (cos < -0.92). Row 1 and 3 stay inside.
    t = labels
    cos[0, t[0]] = rng.uniform(0.93, 0.99)
    cos[1, t[1]] = rng.uniform(0.2, 0.9)
    cos[2, t[2]] = rng.uniform(-0.99, -0.93)
    cos[3, t[3]] = rng.uniform(-0.9, -0.2)
    return (cos,), {"norms": norms, "labels": jnp.asarray(labels), "stats": stats,
                    "m": 0.4, "scale": 16.0, "eps": eps}
  out.append(GradCase(
      name="adaface_logits[clamps]", fn=_adaface_op, reference=reference_adaface_logits,
      paper_grad=paper_adaface_grad, make=make_ada_clamp,
      paper_eq="0 where a clamp binds"))
  # Norms below l_a and above u_a (no magnitude gradient); targets in
  # [-0.99, -0.72], about the fallback edge cos(pi - m) (-0.90 for m = 0.45,
  # -0.70 for m = 0.8): past it for the larger margins, before it for the smaller.
  out.append(_magface_case("magface_logits[clamp, fallback]", "-(sin m + m cos m) m'(a)",
                           [5.0, 130.0, 50.0, 80.0], targets=(-0.99, -0.72)))
  out.append(_magface_case("magface_logits[easy]", "no margin where cos <= 0",
                           [30.0, 90.0, 12.0, 70.0], targets=(-0.6, 0.6), fallback="easy"))
  return out
