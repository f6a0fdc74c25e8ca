"""Margin softmax cross-entropy in one pass: the heads of margins.py fused with the loss.

`margin_logits` / `eqface_logits` / `adaface_logits` followed by a softmax
cross-entropy hold the [B, C] logits, the log-softmax and, in the backward,
the softmax and the cosine gradient: several B x C float32 arrays and as
many passes over them. The functions here return the per-row loss directly:

  forward   two reductions over cos (row max, then sum of exponentials),
            the target column excluded by comparing the column index with
            the label (no one-hot array, no logits array); the margined
            target logit t_i enters as a [B] term:
              ce_i = log(sum_{j != y} exp(r_i c'_ij) + exp(t_i)) - t_i,
            c' = cos (or clip(cos) for AdaFace), r_i the row scale;
  backward  one elementwise pass writes d cos from the softmax
            p_ij = e_ij exp(m_i - lse_i), e_ij = exp(r_i c'_ij - m_i) kept
            from the forward's sum in place of cos (times the clip mask):
              d cos_ij = g_i r_i p_ij           (j != y_i, times the clip mask)
              d cos_iy = g_i (p_iy - 1) dt_i/dc (exact or straight-through);
            EQFace's d r_i = g_i (sum_{j != y} p_ij c'_ij + (p_iy - 1) t_i / r_i).

The target value and its derivative come from the head's spec
(jaxset.ops.margins.HEADS: every head described once); the result
equals head + optax cross-entropy (tests: float64, loss and gradients).
Besides cos itself, the only B x C float32 array is e (which becomes the
cosine gradient of the backward, in place); matmul_cross_entropy takes the
matmul's inputs instead of cos and works on blocks of columns, so not even
that exists (Partial FC's gathered batch); its backward recomputes each
block's cosines and softmax.

Rows with labels < 0 (or >= C) give ce 0 and no gradient; mask the mean
yourself (jaxset.models.heads.labelled_mean).
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxset.ops import margins as mg

__all__ = ["CeTerms", "adaface_cross_entropy", "eqface_cross_entropy", "fused_cross_entropy",
           "head_cross_entropy", "head_terms", "magface_cross_entropy", "margin_cross_entropy",
           "matmul_cross_entropy", "target_terms"]


def _is_target(labels, c):
  return lax.broadcasted_iota(jnp.int32, (labels.shape[0], c), 1) == labels[:, None]


def _nontarget(cos, clip_eps):
  return cos if clip_eps is None else jnp.clip(cos, -1.0 + clip_eps, 1.0 - clip_eps)


def _block_exp(cos, labels, r, col_ok, clip_eps):
  """(m, e, c', is_t) of one block of cosines: m [b] the row max of the
  non-target logits z = r c' (target and excluded columns left out; -inf for
  a row without such a column), e = exp(z - m) (0 where left out)."""
  is_t = _is_target(labels, cos.shape[1])
  cp = _nontarget(cos.astype(r.dtype), clip_eps)
  z = jnp.where(is_t | ~col_ok[None, :], -jnp.inf, r[:, None] * cp)
  m = jnp.max(z, axis=1)
  return m, jnp.exp(z - jnp.where(jnp.isfinite(m), m, 0.0)[:, None]), cp, is_t


def _block_max_sum(cos, labels, r, col_ok, clip_eps):
  """(m, s) [b] of one block of cosines: _block_exp's m and s = sum e."""
  m, e, _, _ = _block_exp(cos, labels, r, col_ok, clip_eps)
  return m, jnp.sum(e, axis=1)


def _inside(c, clip_eps):
  """The clamp's gradient: 1 inside [-1 + eps, 1 - eps] (inclusive, as torch)."""
  return (c >= -1.0 + clip_eps) & (c <= 1.0 - clip_eps)


def _combine(m, s, labels, valid, t, axis_name):
  """(ce, lse) per row from the block's (m, s) and the target logit t (held
  where labels >= 0); over `axis_name` (class shards) the max, the sum of
  exponentials and the target logit are global."""
  owned = labels >= 0
  mx = jnp.maximum(m, jnp.where(owned, t, -jnp.inf))
  if axis_name is not None:
    mx = lax.pmax(mx, axis_name)
  mx = lax.stop_gradient(jnp.where(jnp.isfinite(mx), mx, 0.0))
  # s is relative to the block's own max m <= mx: rescale it (a factor <= 1).
  sum_exp = (jnp.where(jnp.isfinite(m), s * jnp.exp(m - mx), 0.0)
             + jnp.where(owned, jnp.exp(t - mx), 0.0))
  t_row = jnp.where(owned, t, 0.0)
  if axis_name is not None:
    sum_exp, t_row = lax.psum(sum_exp, axis_name), lax.psum(t_row, axis_name)
  lse = mx + jnp.log(sum_exp)
  return jnp.where(valid, lse - t_row, 0.0), lse


def _row_cotangent(g, valid, ct, axis_name):
  if axis_name is not None:
    # The loss is one value per row for all shards, but under shard_map each
    # device receives the cotangent of the rows it reads back (its own):
    # their sum over the shards is the row's cotangent.
    g = lax.psum(g, axis_name)
  return jnp.where(valid, g.astype(ct), 0.0)


def _grads(d_nt, is_t, owned, r, t, dt, lse, g, rest, row_grad):
  """(d cos, d r) from the non-target part d_nt = g r p (times the clamp's
  mask) and, for the row gradient, rest = sum_{j != y} p_j c'_j."""
  p_t = jnp.exp(t - lse)
  d_cos = jnp.where(is_t, (g * (p_t - 1.0) * dt)[:, None], d_nt)
  if not row_grad:
    return d_cos, jnp.zeros_like(r)
  # t = r * base_y, so d t / d r = t / r (r = 0 gives a uniform row: base_y
  # is not recoverable from t, and the row's gradient is taken as 0).
  safe_r = jnp.where(r == 0, 1.0, r)
  target = jnp.where(owned, (p_t - 1.0) * t / safe_r, 0.0)
  return d_cos, jnp.where(r == 0, 0.0, g * (rest + target))


def _target_grad(labels, t, lse, g):
  """d ce / d t on the rows whose target column is here: g (p_t - 1). It
  reaches a head whose target value has inputs of its own (MagFace's
  magnitude); the other heads' t carries no gradient."""
  return jnp.where(labels >= 0, g * (jnp.exp(t - lse) - 1.0), 0.0)


def _block_grad(cos, labels, r, t, dt, lse, g, col_ok, clip_eps, row_grad):
  """(d cos in r's dtype, d r) of one block of rows, recomputing the softmax
  p = exp(r c' - lse) from the cosines and the saved [b] lse."""
  is_t = _is_target(labels, cos.shape[1])
  c = cos.astype(r.dtype)
  cp = _nontarget(c, clip_eps)
  p = jnp.where(col_ok[None, :], jnp.exp(r[:, None] * cp - lse[:, None]), 0.0)
  d_nt = g[:, None] * r[:, None] * p
  if clip_eps is not None:
    d_nt = jnp.where(_inside(c, clip_eps), d_nt, 0.0)
  rest = jnp.sum(jnp.where(is_t, 0.0, p * cp), axis=1) if row_grad else None
  return _grads(d_nt, is_t, labels >= 0, r, t, dt, lse, g, rest, row_grad)


def _forward(cos, labels, valid, r, t, col_ok, clip_eps, axis_name):
  """(ce, lse) per row. labels: the target column on this device or -1."""
  m, s = _block_max_sum(cos, labels, r, col_ok, clip_eps)
  return _combine(m, s, labels, valid, t, axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _fused_ce(cos, labels, valid, r, t, dt, col_ok, clip_eps, row_grad, axis_name):
  """Per-row CE: non-target logits r*c', target logit t (d t / d cos_y = dt),
  columns with col_ok False excluded (padding)."""
  return _forward(cos, labels, valid, r, t, col_ok, clip_eps, axis_name)[0]


def _fused_fwd(cos, labels, valid, r, t, dt, col_ok, clip_eps, row_grad, axis_name):
  # The backward needs the softmax p = e * exp(m - lse), and e is written
  # here anyway: kept (times the clamp's mask) rather than cos, it spares
  # the backward a second pass of exponentials, in the same [B, C] memory.
  m, e, cp, _ = _block_exp(cos, labels, r, col_ok, clip_eps)
  ce, lse = _combine(m, jnp.sum(e, axis=1), labels, valid, t, axis_name)
  k = jnp.where(jnp.isfinite(m), jnp.exp(m - lse), 0.0)
  # EQFace's sum_{j != y} p_j c'_j, from e now (e is 0 at the target).
  rest = k * jnp.sum(e * cp, axis=1) if row_grad else None
  q = e if clip_eps is None else jnp.where(_inside(cos.astype(r.dtype), clip_eps), e, 0.0)
  return ce, (q, labels, valid, r, t, dt, lse, k, rest, jnp.zeros((0,), cos.dtype))


def _fused_bwd(clip_eps, row_grad, axis_name, res, g):
  # Purely local: every device writes the gradient of its own columns.
  q, labels, valid, r, t, dt, lse, k, rest, cos_tag = res
  g = _row_cotangent(g, valid, r.dtype, axis_name)
  d_nt = (g * r * k)[:, None] * q
  d_cos, d_r = _grads(d_nt, _is_target(labels, q.shape[1]), labels >= 0, r, t, dt, lse, g,
                      rest, row_grad)
  return (d_cos.astype(cos_tag.dtype), None, None, d_r, _target_grad(labels, t, lse, g),
          jnp.zeros_like(dt), None)


_fused_ce.defvjp(_fused_fwd, _fused_bwd)


class _Blocks(NamedTuple):
  """Column blocks of width `width` over `cols` columns: block j starts at
  min(j * width, cols - width), so every block is full; the last one
  overlaps its neighbour, and there its columns below j * width are left out
  (the loss and gradients see every column once)."""
  cols: int
  width: int

  @property
  def n(self):
    return -(-self.cols // self.width)

  def take(self, j, w, scale, labels, col_ok):
    """(w [D, width], scale, labels (the target column in the block or -1),
    col_ok) of block j; start: its first column."""
    lo = j * self.width
    start = jnp.minimum(lo, self.cols - self.width)
    w_b = lax.dynamic_slice_in_dim(w, start, self.width, axis=1)
    s_b = lax.dynamic_slice_in_dim(scale, start, self.width)
    cols = start + jnp.arange(self.width)
    ok = lax.dynamic_slice_in_dim(col_ok, start, self.width) & (cols >= lo)
    mine = (labels >= lo) & (labels < start + self.width)
    return start, w_b, s_b, jnp.where(mine, labels - start, -1), ok


def _matmul_forward(x, w, scale, labels, valid, r, t, col_ok, clip_eps, axis_name, blocks):
  ct = r.dtype

  def step(carry, j):
    # Online softmax over the blocks: the row max and the sum of
    # exponentials relative to it, rescaled when the max grows.
    m, s = carry
    _, w_b, s_b, lab_b, ok_b = blocks.take(j, w, scale, labels, col_ok)
    cos = jnp.dot(x, w_b, preferred_element_type=ct) * s_b[None, :]
    m_b, s_b = _block_max_sum(cos, lab_b, r, ok_b, clip_eps)
    m_new = jnp.maximum(m, m_b)
    ref = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    s = (jnp.where(jnp.isfinite(m), s * jnp.exp(m - ref), 0.0)
         + jnp.where(jnp.isfinite(m_b), s_b * jnp.exp(m_b - ref), 0.0))
    return (m_new, s), None

  zero = jnp.zeros_like(x[:, 0], ct)  # the rows' type (their varying mesh axes)
  (m, s), _ = lax.scan(step, (zero - jnp.inf, zero), jnp.arange(blocks.n))
  return _combine(m, s, labels, valid, t, axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10, 11, 12))
def _matmul_ce(x, w, scale, labels, valid, r, t, dt, col_ok, clip_eps, row_grad, axis_name,
               blocks):
  """_fused_ce of cos = (x @ w) * scale, one column block at a time."""
  return _matmul_forward(x, w, scale, labels, valid, r, t, col_ok, clip_eps, axis_name,
                         blocks)[0]


def _matmul_fwd(x, w, scale, labels, valid, r, t, dt, col_ok, clip_eps, row_grad, axis_name,
                blocks):
  ce, lse = _matmul_forward(x, w, scale, labels, valid, r, t, col_ok, clip_eps, axis_name,
                            blocks)
  return ce, (x, w, scale, labels, valid, r, t, dt, col_ok, lse)


def _matmul_bwd(clip_eps, row_grad, axis_name, blocks, res, g):
  x, w, scale, labels, valid, r, t, dt, col_ok, lse = res
  ct = r.dtype
  g = _row_cotangent(g, valid, ct, axis_name)

  def step(carry, j):
    # The block's cosines again (one matmul more than autodiff: the price of
    # never storing them), its d cos, then its columns of d w and d scale
    # written in place, its share of d x and d r added.
    dx, dw, d_scale, d_r = carry
    start, w_b, s_b, lab_b, ok_b = blocks.take(j, w, scale, labels, col_ok)
    raw = jnp.dot(x, w_b, preferred_element_type=ct)
    d_cos, d_r_b = _block_grad(raw * s_b[None, :], lab_b, r, t, dt, lse, g, ok_b, clip_eps,
                               row_grad)
    d_raw = (d_cos * s_b[None, :]).astype(w.dtype)
    dx = dx + jnp.dot(d_raw, w_b.T, preferred_element_type=ct)
    dw_b = jnp.dot(x.T, d_raw, preferred_element_type=ct)
    dw = lax.dynamic_update_slice_in_dim(dw, dw_b.astype(dw.dtype), start, axis=1)
    # d scale_j = sum_i d cos_ij raw_ij = sum_d w_dj dw_dj / scale_j: from the
    # [D, width] block, so the [R, width] raw and d cos die with d_raw.
    d_s = jnp.sum(w_b.astype(ct) * dw_b, axis=0) / s_b
    d_scale = lax.dynamic_update_slice_in_dim(d_scale, d_s.astype(d_scale.dtype), start, axis=0)
    return (dx, dw, d_scale, d_r + d_r_b), None

  # Zeros of the inputs' types; the overlapping last block goes first (its
  # left-out columns hold 0 until their own block writes them).
  init = (jnp.zeros_like(x, ct), jnp.zeros_like(w), jnp.zeros_like(scale),
          jnp.zeros_like(x[:, 0], ct))
  (dx, dw, d_scale, d_r), _ = lax.scan(step, init, jnp.arange(blocks.n), reverse=True)
  d_r = d_r.astype(r.dtype) if row_grad else jnp.zeros_like(r)
  return (dx.astype(x.dtype), dw, d_scale, None, None, d_r, _target_grad(labels, t, lse, g),
          jnp.zeros_like(dt), None)


_matmul_ce.defvjp(_matmul_fwd, _matmul_bwd)


class CeTerms(NamedTuple):
  """A head's [B] pieces for the fused cross-entropy (`target_terms`).

  labels: the target column, -1 for a row without one here; r: the row
  scale; t = r f the target logit (its gradient reaches the head's own
  inputs, MagFace's magnitude); dt = d t / d cos_y; clip_eps, row_grad as
  margins.HeadTerms; new_stats: the head's statistics update or None;
  row_loss: a per-row loss term (MagFace's lambda_g g(a)) or None.
  """
  labels: Any
  r: Any
  t: Any
  dt: Any
  clip_eps: float | None
  row_grad: bool
  new_stats: Any
  row_loss: Any


def head_terms(head: str, cos, labels, kw, *, row=None, stats=None, axis_name=None) -> CeTerms:
  """`target_terms` from the cosine matrix cos [B, C] (not checked here)."""
  labels, c_t = mg.target_cosines(cos, labels)
  return target_terms(head, c_t, labels, kw, row=row, stats=stats, axis_name=axis_name)


def target_terms(head: str, c_t, labels, kw, *, row=None, stats=None,
                 axis_name=None) -> CeTerms:
  """The registered head's CeTerms from the target cosines c_t [B] (labels:
  the target column or -1, already checked): for callers that never hold the
  cosine matrix. kw: the head's keyword arguments; row: its per-row input;
  axis_name: the batch axis of AdaFace's statistics."""
  spec = mg.head_spec(head)
  params, scale = spec.resolve(kw)
  c_t = lax.stop_gradient(c_t)
  h = spec.terms(c_t, row, stats, params, jnp.asarray(scale, c_t.dtype), axis_name)
  r = h.r.astype(c_t.dtype)
  # For EQFace, t's dependence on r is carried by the op's d r (t / r).
  t = lax.stop_gradient(r) * h.value
  return CeTerms(labels, r, t, lax.stop_gradient(r * h.deriv), h.clip_eps, h.row_grad,
                 h.new_stats, h.row_loss)


def fused_cross_entropy(cos, terms: CeTerms, *, valid=None, col_ok=None, axis_name=None):
  """Per-row CE [B] (without terms.row_loss) from `head_terms`; valid [B] rows
  to count (default: labels >= 0), col_ok [C] columns to include (default
  all), axis_name: the class shards (Partial FC), over which the softmax is
  global."""
  labels = terms.labels
  valid = labels >= 0 if valid is None else valid
  col_ok = jnp.ones((cos.shape[1],), bool) if col_ok is None else col_ok
  return _fused_ce(cos, labels, valid, terms.r, terms.t, lax.stop_gradient(terms.dt), col_ok,
                   terms.clip_eps, terms.row_grad, axis_name)


def matmul_cross_entropy(x, w, scale, terms: CeTerms, *, valid=None, col_ok=None,
                         axis_name=None, chunk_classes=None):
  """Per-row CE [R] of the cosines cos = (x @ w) * scale, `chunk_classes` columns at a time.

  x [R, D] unit rows and w [D, C] in the matmul's dtype (the products
  accumulate in r's dtype), scale [C] the columns' inverse norms (w's
  normalisation, differentiable: no normalised copy of w is made); labels
  the [R] CeTerms from `target_terms` (the
  caller takes the target cosines without the matrix); valid, col_ok,
  axis_name as fused_cross_entropy, whose loss and gradients (w.r.t. x, w,
  scale, r) this is.

  Why the blocks: fused_cross_entropy takes cos, so the whole [R, C] cosine
  array exists and, in the backward, its gradient too. Partial FC's gathered
  batch makes that large (R = 8 x 256 rows against C/8 classes per device:
  as much as data parallel's [256, C]). Here the forward scans blocks of
  chunk_classes columns with an online softmax (per row a running max and
  sum of exponentials; the reductions over the class shards happen once,
  after the scan); the backward recomputes each block's cosines from x and
  w, writes its columns of d w and adds its part of d x. At most one
  [R, chunk_classes] block of cosines and its gradient exist at a time, for
  one matmul more per step (4 instead of 3). Column blocks rather than row
  blocks: each block's d w is a slice of the result, not a [D, C] partial
  sum to add. chunk_classes None: one block; a width that does not divide
  C is served by full blocks, the last overlapping its neighbour.
  Under shard_map, x, w and scale must vary over the same mesh axes (lax.pcast
  the replicated one): the gradients come back with the inputs' types.
  """
  c = w.shape[1]
  width = c if chunk_classes is None else chunk_classes
  if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
    raise ValueError(f"chunk_classes must be a positive int (columns of cosines at a time) "
                     f"or None; got {chunk_classes!r}.")
  labels = terms.labels
  valid = labels >= 0 if valid is None else valid
  col_ok = jnp.ones((c,), bool) if col_ok is None else col_ok
  return _matmul_ce(x, w, scale, labels, valid, terms.r, terms.t, lax.stop_gradient(terms.dt),
                    col_ok, terms.clip_eps, terms.row_grad, axis_name,
                    _Blocks(c, min(int(width), c)))


def head_cross_entropy(head: str, cos: ArrayLike, labels: ArrayLike, *,
                       row: ArrayLike | None = None, stats: dict | None = None,
                       axis_name=None, **kw) -> tuple[jax.Array, Any]:
  """(per-row loss [B], new_stats or None) of the registered head, fused and checked.

  The loss of a labelled row is its cross-entropy plus the head's row term
  (MagFace's lambda_g g(a)); rows with labels < 0 give 0. Inputs are checked
  as `margins.head_logits` checks them.
  """
  spec = mg.head_spec(head)
  mg.check_cosines(cos)
  b, c = cos.shape
  row = spec.check_inputs(labels, b, c, row, stats)
  terms = head_terms(head, cos, labels, kw, row=row, stats=stats, axis_name=axis_name)
  ce = fused_cross_entropy(cos, terms)
  if terms.row_loss is not None:
    ce = ce + jnp.where(terms.labels >= 0, terms.row_loss, 0.0)
  return ce, terms.new_stats


def margin_cross_entropy(cos: ArrayLike, labels: ArrayLike, *, scale: float, m1: float = 1.0,
                         m2: float = 0.0, m3: float = 0.0, grad: str = "exact",
                         m1_mode: str = "cosine", fallback: str | None = None) -> jax.Array:
  """Per-row softmax cross-entropy [B] of `margin_logits` (same arguments), fused.

  Equals optax.softmax_cross_entropy_with_integer_labels(margin_logits(...),
  labels) on rows with labels >= 0 (0 elsewhere), with the same gradient
  conventions, without a [B, C] logit array. Degenerate input as
  margin_logits.

  >>> ce = margin_cross_entropy(jnp.array([[0.5, 0.2]]), jnp.array([0]), scale=10.0)
  >>> round(float(ce[0]), 4)
  0.0486
  """
  return head_cross_entropy("margin", cos, labels, **mg.HEADS["margin"].keywords(locals()))[0]


def eqface_cross_entropy(cos: ArrayLike, labels: ArrayLike, quality: ArrayLike, *,
                         scale: float, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                         quality_transform: str = "paper", grad: str = "exact",
                         m1_mode: str = "cosine", fallback: str | None = None) -> jax.Array:
  """Per-row cross-entropy [B] of `eqface_logits` (same arguments), fused;
  the gradient reaches cos and quality (dL/dr_i as eqface_logits).

  >>> ce = eqface_cross_entropy(jnp.array([[0.5, 0.2]]), jnp.array([0]), jnp.array([0.0]),
  ...                           scale=10.0)
  >>> round(float(ce[0]), 4)  # quality 0: a uniform row, log 2
  0.6931
  """
  kw = mg.HEADS["eqface"].keywords(locals())
  return head_cross_entropy("eqface", cos, labels, row=quality, **kw)[0]


def adaface_cross_entropy(cos: ArrayLike, norms: ArrayLike, labels: ArrayLike, stats: dict, *,
                          m: float = 0.4, h: float = 0.333, scale: float = 64.0,
                          t_alpha: float = 0.01, eps: float = 1e-3,
                          axis_name=None) -> tuple[jax.Array, dict]:
  """(per-row cross-entropy [B] of `adaface_logits`, new_stats), fused.

  Same arguments, checks, statistics (margins.adaface_update_stats: EMA
  updated before use, global over axis_name, kept on an empty batch) and
  gradients as adaface_logits + cross-entropy.

  >>> ce, new = adaface_cross_entropy(jnp.zeros((0, 3)), jnp.zeros((0,)),
  ...                                 jnp.zeros((0,), jnp.int32), mg.adaface_init_stats())
  >>> ce.shape, float(new["mean"])  # an empty batch keeps the statistics
  ((0,), 20.0)
  """
  kw = mg.HEADS["adaface"].keywords(locals())
  return head_cross_entropy("adaface", cos, labels, row=norms, stats=stats,
                            axis_name=axis_name, **kw)


def magface_cross_entropy(cos: ArrayLike, norms: ArrayLike, labels: ArrayLike, *,
                          scale: float = 64.0, l_a: float = 10.0, u_a: float = 110.0,
                          l_m: float = 0.45, u_m: float = 0.8, lambda_g: float = 35.0,
                          fallback: str = "arcface", grad: str = "exact") -> jax.Array:
  """Per-row MagFace loss [B]: cross-entropy of `magface_logits` + lambda_g g(a), fused.

  Same arguments and gradients as magface_logits followed by the softmax
  cross-entropy plus its regulariser; the mean over labelled rows is the
  official MagFace loss (loss_id + lambda_g * loss_g).

  >>> loss = magface_cross_entropy(jnp.array([[0.5, 0.2]]), jnp.array([110.0]),
  ...                              jnp.array([0]), scale=1.0)
  >>> round(float(loss[0]), 4)
  1.5937
  """
  kw = mg.HEADS["magface"].keywords(locals())
  return head_cross_entropy("magface", cos, labels, row=norms, **kw)[0]
