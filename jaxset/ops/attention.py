"""Grad-CAM (Selvaraju et al. 2017) through jax.vjp, batched and differentiable.

References: Grad-CAM, Selvaraju et al., ICCV 2017 (arXiv 1610.02391), as CASN uses it
(Zheng et al., CVPR 2019, arXiv 1811.07487); docs/conventions.md, CASN.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxset.ops import _checks

__all__ = ["grad_cam"]


def grad_cam(score_fn: Callable[[jax.Array], jax.Array], feature_map: ArrayLike, *,
             normalize: bool = False, relu: bool = True, eps: float = 1e-12) -> jax.Array:
  """Grad-CAM maps of per-example scores on a conv feature map.

  Grad-CAM eq. (1)-(2): alpha_c = (1/HW) sum_{h,w} d y / d A[h, w, c] and
  L = ReLU(sum_c alpha_c A[:, :, c]), for every example of the batch at once:
  one jax.vjp of score_fn with an all-ones cotangent gives every example's
  d y_b / d A_b, because score_fn must be per-example (score b depends on
  feature_map[b] only; a layer that mixes the batch, such as BatchNorm in
  training mode, would mix the maps too).

  CASN uses it twice: identification attention (y = the predicted identity's
  logit) and Siamese attention (y = indicator . feature).

  Args:
    score_fn: maps feature_map [B, H, W, C] to scores [B] (close over the
      parameters of the layers after the feature map).
    feature_map: [B, H, W, C] activations A of the last conv layer.
    normalize: if True, divide each map by its maximum so it lies in [0, 1];
      an all-zero map stays all zero (no division by zero, finite gradient).
      With relu=False the map is min-max normalised to [0, 1] instead (a
      constant map gives zeros).
    relu: Grad-CAM's ReLU (eq. 2). False keeps the signed map
      sum_c alpha_c A[:, :, c]: it is never all zero unless it is constant,
      which a loss on normalised maps can otherwise reach by pushing every
      location below zero (CASN's siamese_map="signed").
    eps: maps whose maximum is <= eps count as all zero when normalising.

  Returns:
    [B, H, W] attention maps in the dtype of the score_fn's gradients.

  No custom_vjp: the map is itself a gradient, and JAX differentiates it
  again (jax.grad of a loss on grad_cam's output gives gradients of
  gradients, w.r.t. feature_map and anything score_fn closes over), which is
  how CASN trains its attention losses. At the ReLU kink (sum_c alpha_c A = 0)
  the subgradient 0 is used.

  Raises:
    ValueError: feature_map not [B, H, W, C], or score_fn's output not [B].
  """
  feature_map = jnp.asarray(feature_map)
  _checks.check_shape("feature_map", feature_map, (None, None, None, None),
                      "[batch, height, width, channels]")
  scores, pullback = jax.vjp(score_fn, feature_map)
  _checks.check_shape("score_fn(feature_map)", scores, feature_map.shape[:1],
                      "one score per example")
  (grads,) = pullback(jnp.ones_like(scores))
  weights = jnp.mean(grads, axis=(1, 2))  # alpha: [B, C]
  cam = jnp.einsum("bhwc,bc->bhw", feature_map.astype(weights.dtype), weights)
  if relu:
    cam = jax.nn.relu(cam)
  if not normalize:
    return cam
  # A ReLU map is divided by its peak (its minimum is 0); a signed map by its range.
  low = 0.0 if relu else jnp.min(cam, axis=(1, 2), keepdims=True)
  span = jnp.max(cam, axis=(1, 2), keepdims=True) - low
  live = span > eps
  return jnp.where(live, (cam - low) / jnp.where(live, span, 1), 0)
