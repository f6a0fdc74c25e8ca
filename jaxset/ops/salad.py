"""SALAD (Izquierdo & Civera, CVPR 2024, arXiv 2311.15937): optimal-transport
assignment of local features to clusters, with a dustbin, and its aggregation.

Layout: scores [..., N, M] (N local features, M clusters; the paper's score
matrix S transposed), so one row per feature as in NetVLAD's soft assignment.

The assignment is an entropy-regularised transport plan between the features
and the clusters plus a dustbin, found by a fixed number of log-space
Sinkhorn iterations (3 in the paper). The marginals are the paper's: every
feature holds mass 1, every cluster receives 1, the dustbin N - M (all
divided by N + M so the plan is a distribution). Each iteration first
rescales the clusters (columns), then the features (rows), so after any
number of iterations every feature's row, dustbin included, sums to exactly
1; the column sums reach their marginals as the iterations converge.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxset.ops import _checks
from jaxset.ops._checks import compute_dtype as _compute_dtype
from jaxset.ops._norms import eps_normalize

__all__ = ["salad_log_transport", "salad_assignment", "salad_aggregate"]

DEFAULT_ITERS = 3  # paper
_EPS = 1e-12


def _log_marginals(n: int, m: int, dtype):
  """(log_feature_mass [N], log_cluster_mass [M + 1]) of the paper's transport problem."""
  norm = -math.log(n + m)
  log_b = jnp.full((n,), norm, dtype)
  log_a = jnp.concatenate([jnp.full((m,), norm, dtype),
                           jnp.full((1,), math.log(n - m) + norm, dtype)])
  return log_b, log_a


def _augment(scores, dustbin):
  """[..., N, M] scores and a scalar dustbin score -> [..., N, M + 1]."""
  column = jnp.broadcast_to(dustbin.astype(scores.dtype), scores.shape[:-1] + (1,))
  return jnp.concatenate([scores, column], axis=-1)


def _sinkhorn(z, num_iters):
  """Unrolled log-space Sinkhorn on z [..., N, C]; returns (log plan, us, vs).

  us [T, ..., C] and vs [T, ..., N] are the column and row potentials after
  each iteration (the backward pass replays them).
  """
  n, c = z.shape[-2:]
  log_b, log_a = _log_marginals(n, c - 1, z.dtype)
  v = jnp.zeros(z.shape[:-1], z.dtype)
  us, vs = [], []
  for _ in range(num_iters):
    u = log_a - jax.nn.logsumexp(z + v[..., :, None], axis=-2)
    v = log_b - jax.nn.logsumexp(z + u[..., None, :], axis=-1)
    us.append(u)
    vs.append(v)
  # + log(N + M): a feature's row sums to 1 rather than 1 / (N + M).
  log_plan = z + u[..., None, :] + v[..., :, None] + math.log(n + c - 1)
  return log_plan, jnp.stack(us), jnp.stack(vs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _log_transport(z, num_iters):
  return _sinkhorn(z, num_iters)[0]


def _log_transport_fwd(z, num_iters):
  log_plan, us, vs = _sinkhorn(z, num_iters)
  return log_plan, (z, us, vs)


def _log_transport_bwd(num_iters, res, g):
  z, us, vs = res
  n, c = z.shape[-2:]
  log_b, log_a = _log_marginals(n, c - 1, z.dtype)
  # log_plan = z + u_T + v_T: g reaches z directly and through both last potentials.
  dz = g
  gu = jnp.sum(g, axis=-2)
  gv = jnp.sum(g, axis=-1)
  for t in reversed(range(num_iters)):
    u, v = us[t], vs[t]
    v_prev = vs[t - 1] if t > 0 else jnp.zeros_like(v)
    # v_t = log_b - LSE_c(z + u_t): d v_t / d(z, u_t) = -(row softmax of z + u_t).
    row_softmax = jnp.exp(z + u[..., None, :] + v[..., :, None] - log_b[:, None])
    dz = dz - row_softmax * gv[..., :, None]
    gu = gu - jnp.einsum("...nc,...n->...c", row_softmax, gv)
    # u_t = log_a - LSE_n(z + v_{t-1}): d u_t / d(z, v_{t-1}) = -(column softmax).
    col_softmax = jnp.exp(z + v_prev[..., :, None] + u[..., None, :] - log_a)
    dz = dz - col_softmax * gu[..., None, :]
    gv = -jnp.einsum("...nc,...c->...n", col_softmax, gu)
    gu = jnp.zeros_like(gu)
  return (dz,)


_log_transport.defvjp(_log_transport_fwd, _log_transport_bwd)


def _validate(scores, dustbin, num_iters):
  _checks.check_rank("scores", scores, 2, "[..., N features, M clusters]")
  if jnp.ndim(dustbin) != 0:
    raise ValueError(f"dustbin must be a scalar score (the paper's learned z); got shape "
                     f"{tuple(jnp.shape(dustbin))}.")
  n, m = scores.shape[-2:]
  if n <= m:
    raise ValueError(
        f"SALAD needs more local features than clusters (the dustbin's mass is N - M); got "
        f"N={n} features and M={m} clusters. Use fewer clusters or a larger feature map.")
  if not isinstance(num_iters, int) or num_iters < 1:
    raise ValueError(f"num_iters must be an int >= 1 (paper: 3); got {num_iters!r}.")
  _checks.check_finite("scores", scores)
  _checks.check_finite("dustbin", dustbin)


def salad_log_transport(scores, dustbin, num_iters: int = DEFAULT_ITERS):
  """log of SALAD's transport plan, dustbin column included.

  Args:
    scores: [..., N, M] feature-to-cluster scores s_ij (the score MLP's output).
    dustbin: scalar score z of the dustbin column (learned in the paper).
    num_iters: Sinkhorn iterations T (paper: 3), unrolled.

  Returns:
    [..., N, M + 1] log P (float32 at least): log P_ij = s_ij + u_j + v_i +
    log(N + M), with the potentials of T alternating updates
    u = log a - LSE_i(s + v), v = log b - LSE_j(s + u) from v = 0, where
    a = (1, ..., 1, N - M) / (N + M) (clusters, dustbin) and b = 1 / (N + M).
    Every row sums to exactly 1 (the last update is over rows); column j
    sums to ~1 (dustbin ~N - M), exactly at convergence.

  Gradient (jax.custom_vjp): exact for the T unrolled iterations. The
  backward replays them in reverse with the saved potentials: each update
  x = log m - LSE(s + y) passes -softmax(s + y) * g_x to s and to y.

  Raises ValueError when N <= M (no mass left for the dustbin), for a
  non-scalar dustbin, and (eagerly) on NaN/Inf input.
  """
  _validate(scores, dustbin, num_iters)
  dtype = _compute_dtype(scores, jnp.asarray(dustbin))
  z = _augment(scores.astype(dtype), jnp.asarray(dustbin, dtype))
  return _log_transport(z, num_iters)


def salad_assignment(scores, dustbin, num_iters: int = DEFAULT_ITERS):
  """SALAD's soft assignment: the transport plan without its dustbin column.

  scores [..., N, M], scalar dustbin -> P [..., N, M] (float32 at least),
  P_ij in [0, 1], sum_j P_ij = 1 - (mass sent to the dustbin) <= 1. See
  salad_log_transport for the iterations and the gradient.
  """
  return jnp.exp(salad_log_transport(scores, dustbin, num_iters)[..., :-1])


def salad_aggregate(features, assignment, token=None, *, eps: float = _EPS):
  """SALAD's descriptor from assigned features (the paper's aggregation).

  Args:
    features: [..., N, L] per-feature vectors f_i (the paper's dimension-reduced
      features, L = 128).
    assignment: [..., N, M] P from salad_assignment.
    token: optional [..., G] global scene token (the paper's class-token MLP, G
      = 256), L2-normalised and put first.
    eps: normalisation guard; an all-zero cluster stays zero.

  Returns:
    [..., G + M*L]: V_j = sum_i P_ij f_i (no centroid residuals, unlike
    NetVLAD), each V_j L2-normalised (intra-normalisation), flattened
    cluster-major, the normalised token prepended, all L2-normalised.
    Plain JAX (autodiff): it is linear in P and f up to normalisations.
  """
  _checks.check_rank("features", features, 2, "[..., N, L]")
  _checks.check_shape("assignment", assignment, tuple(features.shape[:-1]) + (None,),
                      "[..., N, M] with the features' N")
  for name, x in (("features", features), ("assignment", assignment), ("token", token)):
    _checks.check_float(name, x)
    _checks.check_finite(name, x)
  _checks.check_scalar_range("eps", eps, 0.0, math.inf, "the normalisation guard, e.g. 1e-12",
                             low_open=True)
  dtype = _compute_dtype(features, assignment)
  v = jnp.einsum("...nm,...nl->...ml", assignment.astype(dtype), features.astype(dtype))
  v = eps_normalize(v, eps).reshape(v.shape[:-2] + (-1,))
  if token is not None:
    _checks.check_shape("token", token, tuple(features.shape[:-2]) + (None,),
                        "[..., G] with the features' leading dims")
    v = jnp.concatenate([eps_normalize(token.astype(dtype), eps), v], axis=-1)
  return eps_normalize(v, eps)
