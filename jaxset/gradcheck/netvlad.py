"""NetVLAD gradient cases: `ops.netvlad` against autodiff, finite differences and the paper.

The reference forward is the naive residual form of paper eq. (4) in plain jnp
(it builds the N x K x D residual tensor on purpose, being independent of the
matmul form). The paper gradient writes the chain rule out with explicit
per-cluster Jacobians in numpy loops, independently of the op's backward:

  x_hat_i = x_i / rho_i,       d x_hat_i / d x_i = (I - x_hat_i x_hat_i^T) / rho_i
  a_ik = softmax_k(w_k.x_hat_i + b_k)                                  (eq. 3)
  da_ik / dx_hat_i = a_ik (w_k - sum_j a_ij w_j)
  da_ik / dw_j = a_ik (delta_kj - a_ij) x_hat_i,  da_ik / db_j = a_ik (delta_kj - a_ij)
  V_k = sum_i a_ik (x_hat_i - c_k)                                     (eq. 4)
  dV_k / dx_hat_i = a_ik I + (x_hat_i - c_k) (da_ik / dx_hat_i)^T
  dV_k / dc_k = -(sum_i a_ik) I
  dV_k / dw_j = sum_i (x_hat_i - c_k) (da_ik / dw_j)^T
  U_k = V_k / r_k,  dU_k / dV_k = (I - U_k U_k^T) / r_k   (intra-normalisation)
  y = u / r,        dy / du = (I - y y^T) / r             (final L2)
with r = sqrt(eps + |.|^2) throughout.
"""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxset.gradcheck import GradCase

# The module, not the function that jaxset.ops re-exports under the same name.
netvlad_ops = importlib.import_module("jaxset.ops.netvlad_layer")

EPS = netvlad_ops.DEFAULT_EPS


def reference_netvlad(descriptors, centroids, assign_weight, assign_bias=None, mask=None,
                      normalize_input=True, *, eps=EPS):
  """Plain-jnp NetVLAD in the naive residual form (no custom_vjp), [..., N, D] -> [..., K*D]."""
  x = jnp.asarray(descriptors)
  k, d = centroids.shape
  if mask is not None:
    x = jnp.where(mask[..., None], x, 0)
  if normalize_input:
    x = x / jnp.sqrt(eps + jnp.sum(x ** 2, -1, keepdims=True))
  logits = x @ assign_weight.T
  if assign_bias is not None:
    logits = logits + assign_bias
  a = jax.nn.softmax(logits, -1)
  if mask is not None:
    a = jnp.where(mask[..., None], a, 0)
  residual = x[..., :, None, :] - centroids                 # [..., N, K, D]
  v = jnp.sum(a[..., None] * residual, axis=-3)             # [..., K, D]
  v = v / jnp.sqrt(eps + jnp.sum(v ** 2, -1, keepdims=True))
  v = jnp.reshape(v, v.shape[:-2] + (k * d,))
  return v / jnp.sqrt(eps + jnp.sum(v ** 2, -1, keepdims=True))


def _normalise(z, eps):
  r = np.sqrt(eps + z @ z)
  return z / r, r


def _paper_grad_one(x, c, w, b, m, g, normalize_input, eps):
  """Explicit-Jacobian NetVLAD derivative for one set; returns (g_x, g_c, g_w, g_b)."""
  n, d = x.shape
  k = c.shape[0]
  eye = np.eye(d)
  xh = np.zeros_like(x)
  jin = [eye] * n
  for i in range(n):
    if not m[i]:
      continue
    if normalize_input:
      xh[i], rho = _normalise(x[i], eps)
      jin[i] = (eye - np.outer(xh[i], xh[i])) / rho
    else:
      xh[i] = x[i]
  a = np.zeros((n, k))
  for i in range(n):
    if m[i]:
      s = w @ xh[i] + b
      e = np.exp(s - s.max())
      a[i] = e / e.sum()
  v = np.stack([sum(a[i, kk] * (xh[i] - c[kk]) for i in range(n)) for kk in range(k)])
  u = np.zeros_like(v)
  r_k = np.zeros(k)
  for kk in range(k):
    u[kk], r_k[kk] = _normalise(v[kk], eps)
  y, r = _normalise(u.ravel(), eps)
  # Back through the two normalisations.
  g_u = ((np.eye(k * d) - np.outer(y, y)) / r) @ g
  g_u = g_u.reshape(k, d)
  g_v = np.stack([((eye - np.outer(u[kk], u[kk])) / r_k[kk]) @ g_u[kk] for kk in range(k)])
  # Back through eq. (4) and eq. (3), cluster by cluster.
  g_x = np.zeros_like(x)
  g_c = np.zeros_like(c)
  g_w = np.zeros_like(w)
  g_b = np.zeros_like(b)
  for kk in range(k):
    g_c[kk] = -a[:, kk].sum() * g_v[kk]          # dV_k/dc_k = -(sum_i a_ik) I
  for i in range(n):
    if not m[i]:
      continue
    wbar = a[i] @ w
    g_xh = np.zeros(d)
    for kk in range(k):
      res = xh[i] - c[kk]
      da_dxh = a[i, kk] * (w[kk] - wbar)
      jac = a[i, kk] * eye + np.outer(res, da_dxh)   # dV_k / dx_hat_i
      g_xh += jac.T @ g_v[kk]
      for j in range(k):
        da_dz = a[i, kk] * ((kk == j) - a[i, j])     # d a_ik / d(w_j.x + b_j)
        g_w[j] += (g_v[kk] @ res) * da_dz * xh[i]
        g_b[j] += (g_v[kk] @ res) * da_dz
    g_x[i] = jin[i].T @ g_xh
  return g_x, g_c, g_w, g_b


def paper_grad(args, fixed, cotangent):
  """The NetVLAD derivative from the per-cluster residual formulas (module docstring)."""
  x, c, w = (np.asarray(a, np.float64) for a in args[:3])
  has_bias = len(args) > 3
  b = np.asarray(args[3], np.float64) if has_bias else np.zeros(c.shape[0])
  normalize_input = fixed.get("normalize_input", True)
  mask = fixed.get("mask")
  lead = x.shape[:-2]
  xs = x.reshape((-1,) + x.shape[-2:])
  ms = (np.ones(xs.shape[:2], bool) if mask is None
        else np.asarray(mask, bool).reshape(xs.shape[:2]))
  gs = np.asarray(cotangent, np.float64).reshape(xs.shape[0], -1)
  g_x = np.zeros_like(xs)
  g_c, g_w, g_b = np.zeros_like(c), np.zeros_like(w), np.zeros_like(b)
  for s in range(xs.shape[0]):
    gx, gc, gw, gb = _paper_grad_one(xs[s], c, w, b, ms[s], gs[s], normalize_input, EPS)
    g_x[s] = gx
    g_c += gc
    g_w += gw
    g_b += gb
  grads = (g_x.reshape(lead + x.shape[-2:]), g_c, g_w)
  return grads + ((g_b,) if has_bias else ())


def _maker(batch, n, k, d, *, bias, mask_kind=None):
  def make(rng):
    x = rng.standard_normal((batch, n, d))
    c = 0.5 * rng.standard_normal((k, d))
    w = rng.standard_normal((k, d))
    args = (x, c, w) + ((0.3 * rng.standard_normal(k),) if bias else ())
    fixed = {} if bias else {"assign_bias": None}
    if mask_kind is not None:
      m = rng.random((batch, n)) < 0.7
      m[:, 0] = True
      if mask_kind == "with_empty_set":
        m[-1] = False            # one fully masked set: zero output, zero gradient
      fixed["mask"] = jnp.asarray(m)
    return args, fixed
  return make


def _case(name, make, normalize_input, order=1):
  # jit keeps the many FD / check_grads evaluations cheap (one compile per case).
  @jax.jit
  def fn(*a, **kw):
    return netvlad_ops.netvlad(*a, normalize_input=normalize_input, **kw)

  @jax.jit
  def ref(*a, **kw):
    return reference_netvlad(*a, normalize_input=normalize_input, **kw)

  def paper(args, fixed, cot):
    return paper_grad(args, dict(fixed, normalize_input=normalize_input), cot)

  return GradCase(name=name, fn=fn, reference=ref, paper_grad=paper, make=make, order=order,
                  fd_eps=1e-6, paper_eq="NetVLAD eqs. (3)-(4) + intra/L2 norm")


def cases() -> list[GradCase]:
  # Second order (vjp of the hand-written vjp, which is plain jnp) is checked on
  # the case that exercises every path; it is the costliest check to compile.
  return [
      _case("netvlad[bias,norm_input]", _maker(2, 5, 3, 4, bias=True), True),
      _case("netvlad[no_bias,norm_input](v1)", _maker(2, 5, 3, 4, bias=False), True),
      _case("netvlad[bias,raw_input]", _maker(2, 5, 3, 4, bias=True), False),
      _case("netvlad[no_bias,raw_input]", _maker(1, 6, 3, 4, bias=False), False),
      _case("netvlad[mask,bias,norm_input]",
            _maker(3, 6, 3, 4, bias=True, mask_kind="with_empty_set"), True, order=2),
      _case("netvlad[mask,no_bias,raw_input]",
            _maker(2, 6, 4, 3, bias=False, mask_kind="partial"), False),
  ]
