"""CASN gradient checks: Siamese BCE, attention consistency, and the loss through Grad-CAM.

CASN (Zheng et al. 2019) publishes no code and no gradient formulas; the
"paper" gradients here are the chain rule of its written losses, spelled out
in numpy: BCE dL/dz = sigmoid(z) - y, and for ||R(M_m1) - R(M_m2)||^2 the
resize's transpose, the kept rows and the horizontal arg-max.

The last case differentiates the attention loss through grad_cam (gradients
of gradients): it checks that CASN's training signal is right end to end.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxset.gradcheck import GradCase
from jaxset.ops import losses
from jaxset.ops.attention import grad_cam

# --------------------------------------------------------------------------
# Plain references (autodiff, no custom_vjp).


def reference_bce(logits, same):
  y = same.astype(logits.dtype)
  return -(y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits))


def reference_attention_consistency(map_a, map_b, same, *, threshold=0.5, size=None):
  size = map_a.shape[1] if size is None else size

  def profile(m):
    p = jnp.max(m, axis=-1)
    p = jnp.where(p >= threshold * jnp.max(p, -1, keepdims=True), p, 0)
    return jax.image.resize(p, (p.shape[0], size), method="linear")

  return same.astype(map_a.dtype) * jnp.sum((profile(map_a) - profile(map_b)) ** 2, -1)


def _score(weight, head):
  """A small per-example scorer on a feature map: head . tanh(mean_hw(A) W)."""
  def score_fn(feature_map):
    return jnp.tanh(jnp.mean(feature_map, axis=(1, 2)) @ weight) @ head
  return score_fn


def _through_grad_cam(consistency):
  def fn(feats_a, feats_b, weight, *, head, same, threshold, size):
    score = _score(weight, head)
    return consistency(grad_cam(score, feats_a), grad_cam(score, feats_b), same,
                       threshold=threshold, size=size)
  return fn


# --------------------------------------------------------------------------
# The chain rule of the written losses, in numpy.


def paper_grad_bce(args, fixed, cotangent):
  """dL/dz = sigmoid(z) - y."""
  (z,) = (np.asarray(a) for a in args)
  y = np.asarray(fixed["same"], np.float64)
  return (np.asarray(cotangent) * (1 / (1 + np.exp(-z)) - y),)


def _resize_matrix(h, size):
  """The linear resize as a [size, h] matrix (its columns: resized unit vectors)."""
  eye = jnp.eye(h, dtype=jnp.float64)
  return np.asarray(jax.image.resize(eye, (h, size), method="linear")).T


def paper_grad_attention_consistency(args, fixed, cotangent):
  """L = y ||R k1 max_w M1 - R k2 max_w M2||^2:
  dL/dM1[h, w*] = 2 y k1[h] (R^T (R p1 - R p2))[h], dL/dM2 with the opposite
  sign, zero off the row's arg-max w*(h)."""
  m1, m2 = (np.asarray(a) for a in args)
  y, threshold = np.asarray(fixed["same"], np.float64), fixed["threshold"]
  b, h, _ = m1.shape
  size = fixed["size"] or h
  r = _resize_matrix(h, size)
  g = np.asarray(cotangent)
  d1, d2 = np.zeros_like(m1), np.zeros_like(m2)
  for i in range(b):
    p1, p2 = m1[i].max(-1), m2[i].max(-1)
    k1, k2 = p1 >= threshold * p1.max(), p2 >= threshold * p2.max()
    back = r.T @ (r @ (p1 * k1) - r @ (p2 * k2))
    for row in range(h):
      d1[i, row, np.argmax(m1[i, row])] = 2 * y[i] * g[i] * k1[row] * back[row]
      d2[i, row, np.argmax(m2[i, row])] = -2 * y[i] * g[i] * k2[row] * back[row]
  return d1, d2


# --------------------------------------------------------------------------
# Inputs.


def _far_from_kinks(maps, threshold, gap=1e-3):
  """No ties at a row max and no profile value at the threshold."""
  top2 = np.sort(maps, -1)[..., -2:]
  profile = maps.max(-1)
  cut = threshold * profile.max(-1, keepdims=True)
  kept_not_max = np.abs(profile - cut) > gap
  kept_not_max |= profile == profile.max(-1, keepdims=True)
  return np.all(top2[..., 1] - top2[..., 0] > gap) and np.all(kept_not_max)


def _make_bce(rng):
  z = rng.standard_normal(6) * 3
  return (z,), {"same": np.array([1, 0, 1, 1, 0, 0])}


def _make_consistency(rng):
  fixed = {"same": np.array([1, 0, 1]), "threshold": 0.5, "size": 7}
  while True:
    m1, m2 = np.abs(rng.standard_normal((2, 3, 5, 4)))
    if _far_from_kinks(m1, 0.5) and _far_from_kinks(m2, 0.5):
      return (m1, m2), fixed


def _make_through_grad_cam(rng):
  b, h, w, c, k = 2, 4, 3, 3, 2
  fixed = {"same": np.array([1, 1]), "threshold": 0.3, "size": 6}
  while True:
    fa, fb = rng.standard_normal((2, b, h, w, c))
    weight = rng.standard_normal((c, k))
    head = rng.standard_normal(k)
    ok = True
    for f in (fa, fb):
      # Grad-CAM's pre-ReLU map, in numpy, to stay off the ReLU and max kinks.
      t = np.tanh(f.mean((1, 2)) @ weight)
      alpha = ((1 - t ** 2) * head) @ weight.T / (h * w)
      pre = np.einsum("bhwc,bc->bhw", f, alpha)
      ok &= np.all(np.abs(pre) > 1e-3) and _far_from_kinks(np.maximum(pre, 0), 0.3)
    if ok:
      return (fa, fb, weight), dict(fixed, head=head)


def cases() -> list[GradCase]:
  return [
      GradCase(name="verification_bce", fn=losses.verification_bce,
               reference=reference_bce, paper_grad=paper_grad_bce, make=_make_bce,
               order=2, paper_eq="CASN BCE: sigmoid(z) - y"),
      GradCase(name="attention_consistency_loss", fn=losses.attention_consistency_loss,
               reference=reference_attention_consistency,
               paper_grad=paper_grad_attention_consistency, make=_make_consistency,
               order=2, paper_eq="CASN ||M1-M2||^2 chain rule"),
      GradCase(name="attention_consistency/grad_cam",
               fn=_through_grad_cam(losses.attention_consistency_loss),
               reference=_through_grad_cam(reference_attention_consistency),
               paper_grad=None, make=_make_through_grad_cam, order=1,
               paper_eq="grad of grad through Grad-CAM"),
  ]
