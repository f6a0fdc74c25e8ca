"""NetVLAD pooling (Arandjelovic et al., CVPR 2016), hard VLAD, and their initialisation.

Notation (paper section 3.1): N local descriptors x_i in R^D (e.g. the H*W cells of
a conv map), K clusters with anchors c_k, assignment weights w_k and biases b_k.

  soft assignment (paper eq. 3):  a_k(x_i) = exp(w_k.x_i + b_k) / sum_k' exp(w_k'.x_i + b_k')
  aggregation     (paper eq. 4):  V(k, :)  = sum_i a_k(x_i) (x_i - c_k)
                                           = (A^T X)_k - (sum_i a_k(x_i)) c_k
  then intra-normalisation (each V(k, :) L2-normalised) and a whole-vector L2.

The second aggregation form needs only [N, K] and [K, D] arrays; the residual
tensor x_i - c_k of shape N x K x D is never built, in the forward or in the
backward (see `_netvlad_bwd`).

Conventions (docs/conventions.md, NetVLAD):
- Weight layout: `assign_weight` is [K, D], row k is the paper's w_k (a PyTorch
  1x1 conv weight [K, D, 1, 1] squeezed; a Flax Dense kernel [D, K] transposed).
- Every L2 normalisation puts eps inside the square root, x / sqrt(eps + sum x^2),
  as the official MatConvNet layer (vl_nnnormalize) does; the zero vector maps to 0.
- Flatten order: [K, D] row-major (cluster-major, as the PyTorch ports). The MATLAB
  release flattens cluster-minor (D-major): see `to_matlab_order`/`from_matlab_order`.
- Compute dtype: float32 for float32/bfloat16 input (float64 under x64); the output
  has the descriptors' dtype.

References: NetVLAD (Arandjelovic et al., CVPR 2016, arXiv 1511.07247) and its
authors' MATLAB code (Relja/netvlad); docs/conventions.md, NetVLAD.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxset.ops import _checks
from jaxset.ops._norms import eps_normalize

DEFAULT_EPS = 1e-12
# The backward of the input L2 normalisation clips its 1/|x_i| factor at
# 1/sqrt(INPUT_GRAD_EPS) = 1e3. The exact factor is 1/sqrt(eps + |x_i|^2),
# up to 1/sqrt(DEFAULT_EPS) = 1e6 for a zero descriptor (padding, a dead
# ReLU cell), which would reach the optimiser. Descriptors with |x_i| >= 1e-3
# (every realistic conv feature) get the exact gradient.
INPUT_GRAD_EPS = 1e-6


# ----------------------------------------------------------------------------------
# Validation and small helpers.


def _validate(descriptors, centroids, assign_weight=None, assign_bias=None, mask=None):
  """Shape checks (static, always) and NaN checks (eager only). Returns (K, D)."""
  _checks.check_rank("descriptors", descriptors, 2, "[..., N, D]: N local descriptors of size D")
  d = int(jnp.shape(descriptors)[-1])
  _checks.check_rank("centroids", centroids, 2, "[K, D]")
  _checks.check_shape("centroids", centroids, (None, d),
                      f"[K, D] with D = descriptors.shape[-1] = {d}")
  k = int(jnp.shape(centroids)[0])
  if k < 1:
    raise ValueError("centroids must hold at least one cluster (K >= 1); got K=0.")
  if assign_weight is not None:
    _checks.check_shape("assign_weight", assign_weight, (k, d),
                        "[K, D], row k is w_k; transpose a Flax Dense kernel [D, K]")
  if assign_bias is not None:
    _checks.check_shape("assign_bias", assign_bias, (k,), "[K], or None for no bias")
  if mask is not None:
    _checks.check_shape("mask", mask, tuple(jnp.shape(descriptors)[:-1]),
                        "descriptors.shape[:-1], True = a real descriptor")
  for name, x in (("descriptors", descriptors), ("centroids", centroids),
                  ("assign_weight", assign_weight), ("assign_bias", assign_bias)):
    _checks.check_float(name, x)
  _checks.check_binary("mask", mask)
  if mask is not None and _checks.is_concrete(descriptors, mask):
    # Masked-out padding may hold anything (the jaxset.ops.pooling convention):
    # only the valid descriptors are checked.
    descriptors = jnp.where(jnp.asarray(mask, bool)[..., None], descriptors, 0)
  for name, x in (("descriptors", descriptors), ("centroids", centroids),
                  ("assign_weight", assign_weight), ("assign_bias", assign_bias)):
    _checks.check_finite(name, x)
  return k, d


def _check_eps(eps) -> None:
  if not float(eps) > 0:
    raise ValueError(f"eps must be > 0 (it keeps every 1/sqrt(eps + |v|^2) finite); got {eps}.")


def _varying_axes(x) -> frozenset:
  """The shard_map mesh axes along which x varies (empty outside shard_map)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "manual_axis_type", None)
  if mat is not None:
    return frozenset(mat.varying)
  return frozenset(getattr(aval, "vma", ()))


def _vary_like(params, like):
  """Marks replicated params as varying along `like`'s shard_map axes.

  Under jax.shard_map (check_vma=True) a custom_vjp backward must return a
  cotangent with its primal's type; the parameter cotangents are computed from
  per-device descriptors and so vary across devices. Casting the parameters to
  varying first makes the types agree, and autodiff of that cast is the psum
  that adds up the per-device parameter gradients. A no-op outside shard_map.
  """
  axes = _varying_axes(like)
  if not axes:
    return params

  def cast(p):
    missing = tuple(sorted(axes - _varying_axes(p)))
    if not missing:
      return p
    if hasattr(jax.lax, "pcast"):
      return jax.lax.pcast(p, missing, to="varying")
    return jax.lax.pvary(p, missing)

  return tuple(cast(p) for p in params)


def _prepare(descriptors, mask, dtype):
  """Flattens leading dims to one batch dim; masked descriptors are zeroed.

  Zeroing matters: a padded descriptor then contributes nothing even if it
  holds garbage, and its gradient is exactly zero.
  """
  lead = tuple(jnp.shape(descriptors)[:-2])
  n, d = jnp.shape(descriptors)[-2:]
  # An explicit batch size: reshape's -1 cannot be inferred when N == 0.
  x = jnp.reshape(descriptors, (math.prod(lead), n, d)).astype(dtype)
  if mask is None:
    m = jnp.ones(x.shape[:2], bool)
  else:
    m = jnp.reshape(jnp.asarray(mask).astype(bool), x.shape[:2])
    x = jnp.where(m[..., None], x, 0)
  return lead, x, m


# ----------------------------------------------------------------------------------
# The NetVLAD core: forward (matmul form), and its hand-derived backward.


def _forward(x, c, w, b, m, normalize_input, eps):
  """x [B, N, D], c/w [K, D], b [K], m [B, N] bool -> (y [B, K*D], residuals)."""
  bsz, _, d = x.shape
  k = c.shape[0]
  if normalize_input:
    inv_rho = jax.lax.rsqrt(eps + jnp.sum(x * x, -1, keepdims=True))  # [B, N, 1]
    xh = x * inv_rho
  else:
    inv_rho = None
    xh = x
  logits = jnp.einsum("bnd,kd->bnk", xh, w) + b                     # w_k.x_i + b_k
  a = jnp.where(m[..., None], jax.nn.softmax(logits, axis=-1), 0)   # eq. (3), [B, N, K]
  mass = jnp.sum(a, axis=1)                                          # sum_i a_k(x_i), [B, K]
  v = jnp.einsum("bnk,bnd->bkd", a, xh) - mass[..., None] * c        # eq. (4), [B, K, D]
  inv_rk = jax.lax.rsqrt(eps + jnp.sum(v * v, -1, keepdims=True))   # [B, K, 1]
  u = v * inv_rk                                                     # intra-normalisation
  inv_r = jax.lax.rsqrt(eps + jnp.sum(u * u, (1, 2), keepdims=True))  # [B, 1, 1]
  y = u * inv_r                                                      # whole-vector L2
  res = (xh, inv_rho, a, mass, u, inv_rk, y, inv_r, c, w)
  return jnp.reshape(y, (bsz, k * d)), res


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _netvlad_core(x, c, w, b, m, normalize_input, eps):
  return _forward(x, c, w, b, m, normalize_input, eps)[0]


def _netvlad_fwd(x, c, w, b, m, normalize_input, eps):
  y, res = _forward(x, c, w, b, m, normalize_input, eps)
  return y, res


def _netvlad_bwd(normalize_input, eps, res, g):
  """The NetVLAD derivative, in matmul form (no N x K x D array).

  Reverse order through the forward, with n(z) = z / sqrt(eps + |z|^2) whose VJP is
  g -> (g - n (n.g)) / sqrt(eps + |z|^2):
    final L2      g_u   = (g - y (y.g)) / r
    intra-norm    g_V_k = (g_u_k - u_k (u_k.g_u_k)) / r_k
    aggregation   V_k = sum_i a_ik (x_i - c_k), so
                  dL/da_ik = g_V_k.(x_i - c_k) = (X g_V^T)_ik - (g_V_k.c_k)  -> [N, K]
                  dL/dx_i  = sum_k a_ik g_V_k = (A g_V)_i                    -> [N, D]
                  dL/dc_k  = -(sum_i a_ik) g_V_k                             -> [K, D]
    softmax (eq. 3)  g_s_ik = a_ik (g_a_ik - sum_k' a_ik' g_a_ik')  (mask rows: a = 0)
    linear  s = X W^T + b:  g_W = g_s^T X,  g_b = sum_i g_s_i,  g_X += g_s W
    input L2      g_x_i = (g_xh_i - xh_i (xh_i.g_xh_i)) / max(rho_i, sqrt(INPUT_GRAD_EPS))
  (the clip bounds a zero descriptor's gradient by 1e3; exact for |x_i| >= 1e-3).
  The residual term (x_i - c_k) da_ik/dx_i^T of the per-cluster Jacobian contracts
  to the [N, K] matrix g_a above, which is why nothing N x K x D is needed.
  """
  xh, inv_rho, a, mass, u, inv_rk, y, inv_r, c, w = res
  g = jnp.reshape(g, y.shape)
  g_u = (g - y * jnp.sum(y * g, (1, 2), keepdims=True)) * inv_r
  g_v = (g_u - u * jnp.sum(u * g_u, -1, keepdims=True)) * inv_rk
  g_a = jnp.einsum("bnd,bkd->bnk", xh, g_v) - jnp.sum(g_v * c, -1)[:, None, :]
  g_xh = jnp.einsum("bnk,bkd->bnd", a, g_v)
  g_c = -jnp.einsum("bk,bkd->kd", mass, g_v)
  g_s = a * (g_a - jnp.sum(a * g_a, -1, keepdims=True))
  g_w = jnp.einsum("bnk,bnd->kd", g_s, xh)
  g_b = jnp.sum(g_s, (0, 1))
  g_xh = g_xh + jnp.einsum("bnk,kd->bnd", g_s, w)
  if normalize_input:
    inv_rho = jnp.minimum(inv_rho, 1 / math.sqrt(INPUT_GRAD_EPS))
    g_x = (g_xh - xh * jnp.sum(xh * g_xh, -1, keepdims=True)) * inv_rho
  else:
    g_x = g_xh
  return g_x, g_c, g_w, g_b, None


_netvlad_core.defvjp(_netvlad_fwd, _netvlad_bwd)


def _netvlad_plain(x, c, w, b, m, normalize_input, eps):
  """The same matmul-form forward with no custom_vjp (for autodiff comparisons)."""
  return _forward(x, c, w, b, m, normalize_input, eps)[0]


def netvlad(descriptors, centroids, assign_weight, assign_bias=None, mask=None,
            normalize_input=True, *, eps=DEFAULT_EPS):
  """NetVLAD pooling of a set of local descriptors (paper eqs. 3 and 4).

  Args:
    descriptors: [..., N, D] local descriptors (float32 or bfloat16; float32 math).
    centroids: [K, D] anchors c_k.
    assign_weight: [K, D] assignment weights, row k = w_k.
    assign_bias: [K] b_k, or None (the official "v1" layer has no bias).
    mask: [..., N] bool, False drops a (padded) descriptor; None keeps all.
    normalize_input: L2-normalise each descriptor first (official "v1").
    eps: added inside every sqrt of the L2 normalisations.

  Returns:
    [..., K*D] in the descriptors' dtype, flattened [K, D] row-major: V(k, :) =
    sum_i a_k(x_i)(x_i - c_k), each V(k, :) L2-normalised, then the whole vector.

  The output has norm 1 (up to eps) unless every V(k, :) is zero, e.g. a fully
  masked set or N == 0, where it is the zero vector. A cluster with no mass
  (or whose residuals cancel) gives a zero block. Zero descriptors normalise
  to zero. Gradients stay finite in all these cases (each 1/sqrt(eps + .) is
  at most 1/sqrt(eps)); the input normalisation's factor is clipped at 1e3 in
  the backward (INPUT_GRAD_EPS), so a zero descriptor's gradient is bounded
  by 1e3 |upstream| rather than 1e6. Masked-out descriptors may hold
  anything, NaN included (as in jaxset.ops.pooling): they are zeroed first. The backward is a
  hand-written custom_vjp that, like the
  forward, never builds an N x K x D array. NaN/Inf in a valid descriptor or a
  parameter raises eagerly (under jit it cannot be seen and propagates).
  """
  _validate(descriptors, centroids, assign_weight, assign_bias, mask)
  _check_eps(eps)
  k, d = jnp.shape(centroids)
  dtype = _checks.compute_dtype(descriptors, centroids, assign_weight, assign_bias)
  lead, x, m = _prepare(descriptors, mask, dtype)
  b = jnp.zeros((k,), dtype) if assign_bias is None else jnp.asarray(assign_bias).astype(dtype)
  c, w, b = _vary_like((jnp.asarray(centroids).astype(dtype),
                        jnp.asarray(assign_weight).astype(dtype), b), x)
  y = _netvlad_core(x, c, w, b, m, bool(normalize_input), float(eps))
  return jnp.reshape(y, lead + (k * d,)).astype(jnp.result_type(descriptors))


def vlad(descriptors, centroids, mask=None, normalize_input=True, *, eps=DEFAULT_EPS):
  """Hard-assignment VLAD (paper eq. 1) with NetVLAD's normalisation, for comparison.

  a_k(x_i) = 1 if c_k is the nearest anchor to x_i (Euclidean, ties to the lowest
  k), else 0; then V(k, :) = sum_i a_k(x_i)(x_i - c_k), intra-normalisation and
  whole-vector L2, as in `netvlad`, same shapes and flatten order. The
  assignment is piecewise constant, so it is held fixed under differentiation
  (gradients flow through the residuals and normalisations only). Degenerate
  input behaves as in `netvlad`: empty clusters give zero blocks, a fully
  masked set gives the zero vector.
  """
  _validate(descriptors, centroids, mask=mask)
  _check_eps(eps)
  k, d = jnp.shape(centroids)
  dtype = _checks.compute_dtype(descriptors, centroids)
  lead, x, m = _prepare(descriptors, mask, dtype)
  c = jnp.asarray(centroids).astype(dtype)
  if normalize_input:
    x = eps_normalize(x, eps)
  # |x - c|^2 minus the |x|^2 term, which does not change the argmin.
  dist = jnp.sum(c * c, -1) - 2 * jnp.einsum("bnd,kd->bnk", x, c)
  a = jax.nn.one_hot(jnp.argmin(jax.lax.stop_gradient(dist), -1), k, dtype=dtype)
  a = jnp.where(m[..., None], a, 0)
  v = jnp.einsum("bnk,bnd->bkd", a, x) - jnp.sum(a, 1)[..., None] * c
  y = eps_normalize(jnp.reshape(eps_normalize(v, eps), (x.shape[0], k * d)), eps)
  return jnp.reshape(y, lead + (k * d,)).astype(jnp.result_type(descriptors))


# ----------------------------------------------------------------------------------
# Initialisation: k-means anchors, the alpha rule, assignment parameters.


@functools.partial(jax.jit, static_argnames=("k", "iters", "init"))
def _kmeans(x, key, k, iters, init):
  n = x.shape[0]
  sq = jnp.sum(x * x, -1)

  def sqdist(c):  # [N, K] squared distances via one matmul.
    return jnp.maximum(sq[:, None] - 2 * x @ c.T + jnp.sum(c * c, -1), 0)

  init_key, loop_key = jax.random.split(key)
  if init == "random":
    c0 = x[jax.random.choice(init_key, n, (k,), replace=False)]
  else:  # k-means++: next centre drawn with probability proportional to D(x)^2.
    first = jax.random.randint(init_key, (), 0, n)
    c0 = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
    d2 = jnp.sum((x - x[first]) ** 2, -1)

    def add_centre(j, carry):
      c, d2 = carry
      # log of a clamped D^2: already chosen points (D^2 = 0) get probability
      # ~e^-80 relative to the rest; all-identical data falls back to uniform.
      logits = jnp.log(jnp.maximum(d2, jnp.finfo(x.dtype).tiny))
      i = jax.random.categorical(jax.random.fold_in(loop_key, j), logits)
      c = c.at[j].set(x[i])
      return c, jnp.minimum(d2, jnp.sum((x - x[i]) ** 2, -1))

    c0, _ = jax.lax.fori_loop(1, k, add_centre, (c0, d2))

  def lloyd(_, c):
    dist = sqdist(c)
    idx = jnp.argmin(dist, -1)
    onehot = jax.nn.one_hot(idx, k, dtype=x.dtype)
    counts = jnp.sum(onehot, 0)
    means = (onehot.T @ x) / jnp.maximum(counts, 1)[:, None]
    # Empty clusters are re-seeded with the points farthest from their centre:
    # the j-th empty cluster (in index order) takes the j-th farthest point.
    empty = counts == 0
    far = jax.lax.top_k(jnp.min(dist, -1), k)[1]
    rank = jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)
    return jnp.where(empty[:, None], x[far[rank]], means)

  return jax.lax.fori_loop(0, iters, lloyd, c0)


def kmeans(descriptors, k, *, key, iters=20, init="kmeans++"):
  """k-means (Lloyd) anchors for NetVLAD/VLAD initialisation.

  Args:
    descriptors: [M, D] training descriptors (the official recipe: ~50,000, 100
      per image from 500 images), as the layer sees them (L2-normalised when
      the layer uses normalize_input=True).
    k: number of clusters, 1 <= k <= M.
    key: jax.random.key for the initialisation.
    iters: Lloyd iterations (fixed count, so the whole thing is one jit).
    init: "kmeans++" (D^2 sampling) or "random" (k distinct data points).

  Returns:
    [k, D] centroids (float32, or float64 under x64). Deterministic for a key.
    A cluster that becomes empty is re-seeded with the data point farthest from
    its current centre (deterministic, no extra randomness). Jittable, with k,
    iters and init static.
  """
  _checks.check_rank("descriptors", descriptors, 2, "[M, D]")
  if jnp.ndim(descriptors) != 2:
    raise ValueError(f"descriptors must be [M, D] for kmeans; got shape "
                     f"{tuple(jnp.shape(descriptors))}. Reshape to (-1, D) first.")
  m = int(jnp.shape(descriptors)[0])
  if not 1 <= int(k) <= m:
    raise ValueError(f"k must be in [1, M={m}] (M = descriptors.shape[0]); got k={k}.")
  if init not in ("kmeans++", "random"):
    raise ValueError(f"init must be 'kmeans++' or 'random'; got {init!r}.")
  _checks.check_float("descriptors", descriptors)
  if not jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
    raise ValueError(f"key must be a typed PRNG key, e.g. jax.random.key(0); got {key!r}.")
  _checks.check_finite("descriptors", descriptors)
  x = jnp.asarray(descriptors).astype(_checks.compute_dtype(descriptors))
  return _kmeans(x, key, int(k), int(iters), init)


ALPHA_TARGET = -math.log(0.01)


def netvlad_alpha(descriptors, centroids, *, eps=DEFAULT_EPS):
  """The official alpha rule: alpha = -ln(0.01) / mean_i(gap_i).

  gap_i is the difference between the two largest dot products of descriptor
  x_i with the unit centroids c_k / |c_k|, so that on average the best cluster
  gets 100x the (pre-softmax-normalised) weight of the runner-up.

  Args:
    descriptors: [..., D] training descriptors (as the layer sees them).
    centroids: [K, D], K >= 2.

  Returns:
    a float32 scalar. If every gap is zero (all descriptors tie), this raises
    eagerly; under jit the mean gap is clamped at eps, giving a huge finite alpha.
  """
  _checks.check_rank("descriptors", descriptors, 1, "[..., D]")
  d = int(jnp.shape(descriptors)[-1])
  _checks.check_shape("centroids", centroids, (None, d),
                      f"[K, D] with D = descriptors.shape[-1] = {d}")
  if jnp.shape(centroids)[0] < 2:
    raise ValueError(f"centroids must hold K >= 2 clusters for the alpha rule (it uses "
                     f"the gap between the two best); got K={jnp.shape(centroids)[0]}.")
  _checks.check_finite("descriptors", descriptors)
  _checks.check_finite("centroids", centroids)
  dtype = _checks.compute_dtype(descriptors, centroids)
  x = jnp.reshape(descriptors, (-1, d)).astype(dtype)
  unit = eps_normalize(jnp.asarray(centroids).astype(dtype), eps)
  top2 = jax.lax.top_k(x @ unit.T, 2)[0]
  mean_gap = jnp.mean(top2[:, 0] - top2[:, 1])
  if _checks.is_concrete(mean_gap) and not float(mean_gap) > 0:
    raise ValueError("netvlad_alpha: every descriptor is equally close to its two best "
                     "centroids (mean gap 0), so alpha would be infinite. Check that the "
                     "centroids are distinct and the descriptors not constant.")
  return ALPHA_TARGET / jnp.maximum(mean_gap, eps)


def netvlad_params_from_centroids(centroids, alpha, *, assignment="paper", eps=DEFAULT_EPS):
  """NetVLAD parameters from k-means anchors.

  assignment="paper" (paper section 3.1, below eq. 2): w_k = 2 alpha c_k,
    b_k = -alpha |c_k|^2, so softmax_k(w_k.x + b_k) = softmax_k(-alpha |x - c_k|^2).
  assignment="official" (the released "v1" layer): w_k = alpha c_k / |c_k|, no bias.

  Returns:
    {"centroids": [K, D], "assign_weight": [K, D], "assign_bias": [K] or None}.
  """
  _checks.check_rank("centroids", centroids, 2, "[K, D]")
  if jnp.ndim(centroids) != 2:
    raise ValueError(f"centroids must be [K, D]; got shape {tuple(jnp.shape(centroids))}.")
  c = jnp.asarray(centroids)
  alpha = jnp.asarray(alpha, c.dtype)
  if assignment == "paper":
    w, b = 2 * alpha * c, -alpha * jnp.sum(c * c, -1)
  elif assignment == "official":
    w, b = alpha * eps_normalize(c, eps), None
  else:
    raise ValueError(f"assignment must be 'paper' or 'official'; got {assignment!r}.")
  return {"centroids": c, "assign_weight": w, "assign_bias": b}


# ----------------------------------------------------------------------------------
# Flatten order converters.


def _check_flat(v, k, d, axis):
  size = jnp.shape(v)[axis]
  if size != k * d:
    raise ValueError(f"v must have K*D = {k}*{d} = {k * d} entries along axis {axis}; "
                     f"got {size} (shape {tuple(jnp.shape(v))}).")


def to_matlab_order(v, k, d, *, axis=-1):
  """[K, D] row-major (jaxset, PyTorch ports) -> the MATLAB release's order.

  MATLAB's vector is cluster-minor (D-major): entry d*K + k holds V(k, d).
  Example (K=2, D=3): [V00 V01 V02 V10 V11 V12] -> [V00 V10 V01 V11 V02 V12].
  Works along `axis` (e.g. the input axis of a PCA matrix).
  """
  _check_flat(v, k, d, axis)
  v = jnp.moveaxis(jnp.asarray(v), axis, -1)
  out = jnp.reshape(jnp.swapaxes(jnp.reshape(v, v.shape[:-1] + (k, d)), -1, -2),
                    v.shape)
  return jnp.moveaxis(out, -1, axis)


def from_matlab_order(v, k, d, *, axis=-1):
  """The MATLAB release's cluster-minor order -> [K, D] row-major. Inverse of
  `to_matlab_order`."""
  _check_flat(v, k, d, axis)
  v = jnp.moveaxis(jnp.asarray(v), axis, -1)
  out = jnp.reshape(jnp.swapaxes(jnp.reshape(v, v.shape[:-1] + (d, k)), -1, -2),
                    v.shape)
  return jnp.moveaxis(out, -1, axis)


__all__ = ["netvlad", "vlad", "kmeans", "netvlad_alpha", "netvlad_params_from_centroids",
           "to_matlab_order", "from_matlab_order"]
