"""L2 norms shared by the ops and the Flax heads (float32 at least, finite at 0)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def safe_norm(x, axis: int = -1, eps: float = 1e-12):
  """L2 norm along `axis`, computed in float32 at least: sqrt(max(sum x^2, eps)).

  The floor keeps the gradient finite at x = 0 (there it is zero); the zero
  vector therefore reports norm sqrt(eps) = 1e-6, not 0.
  """
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis), eps))


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """x / max(||x||, sqrt(eps)) in float32 at least; the zero vector maps to 0."""
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return x / jnp.expand_dims(safe_norm(x, axis, eps), axis)


def eps_normalize(x, eps, axis: int = -1):
  """x / sqrt(eps + sum x^2) along `axis` (MatConvNet's vl_nnnormalize), in x's dtype."""
  return x * jax.lax.rsqrt(eps + jnp.sum(x * x, axis=axis, keepdims=True))
