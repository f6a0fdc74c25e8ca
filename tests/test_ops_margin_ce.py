"""jaxset.ops.margin_ce: fused head + cross-entropy equals head logits + optax CE (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxset.ops import margin_ce, margins

B, C = 8, 11


def _inputs():
  r = np.random.default_rng(0)
  cos = np.clip(r.normal(0, 0.4, (B, C)), -1, 1)
  lab = r.integers(0, C, B)
  lab[0], lab[1], lab[4] = 2, 3, -1
  cos[0, 2], cos[1, 3] = 1.0, -1.0  # targets at +-1: the clipped, bounded gradient
  q = r.uniform(0, 1, B)
  q[5] = 0.0  # a zero row scale: uniform row
  return (jnp.asarray(cos), jnp.asarray(lab), jnp.asarray(q),
          jnp.asarray(r.uniform(5, 30, B)), jnp.asarray(r.normal(size=B)))


def _ce(logits, lab):
  v = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(lab >= 0, lab, 0))
  return jnp.where(lab >= 0, v, 0.0)


@pytest.mark.parametrize("grad", ["exact", "straight_through"])
def test_fused_equals_logits_then_cross_entropy(x64, grad):
  cos, lab, q, norms, w = _inputs()
  stats = {"mean": jnp.float64(20.0), "std": jnp.float64(100.0)}
  kw = {"scale": 16.0, "m2": 0.5, "grad": grad}
  pairs = [
      (lambda c, q: _ce(margins.margin_logits(c, lab, **kw), lab),
       lambda c, q: margin_ce.margin_cross_entropy(c, lab, **kw)),
      (lambda c, q: _ce(margins.eqface_logits(c, lab, q, quality_transform="official", **kw), lab),
       lambda c, q: margin_ce.eqface_cross_entropy(c, lab, q, quality_transform="official", **kw)),
      (lambda c, q: _ce(margins.adaface_logits(c, norms, lab, stats, scale=16.0)[0], lab),
       lambda c, q: margin_ce.adaface_cross_entropy(c, norms, lab, stats, scale=16.0)[0]),
  ]
  for ref, fused in pairs:
    np.testing.assert_allclose(fused(cos, q), ref(cos, q), rtol=0, atol=1e-12)
    g_ref = jax.grad(lambda c, q, ref=ref: jnp.sum(w * ref(c, q)), (0, 1))(cos, q)
    g_fused = jax.jit(jax.grad(lambda c, q, fused=fused: jnp.sum(w * fused(c, q)), (0, 1)))(cos, q)
    # Relative to the gradient's size: the exact target factor reaches ~700 at cos = +-1.
    for a, b in zip(g_fused, g_ref):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    assert float(jnp.abs(g_fused[0]).max()) > 1e-3
  assert float(margin_ce.margin_cross_entropy(cos, lab, **kw)[4]) == 0.0  # ignored row
  _, new = margin_ce.adaface_cross_entropy(cos, norms, lab, stats)
  _, ref = margins.adaface_logits(cos, norms, lab, stats)
  np.testing.assert_allclose(new["std"], ref["std"], rtol=1e-14)


@pytest.mark.parametrize("width", [None, 1, 4, 11, 50])
def test_matmul_blocks_equal_fused(x64, width):
  """matmul_cross_entropy (cosines (x @ w) * scale, one block of columns at a
  time; 4 does not divide C = 11) equals fused_cross_entropy on the full
  cosines: loss and gradients w.r.t. x, w (through the column scale) and r."""
  _, lab, q, norms, g = _inputs()
  r = np.random.default_rng(1)
  x = jnp.asarray(r.normal(size=(B, 6)))
  w = jnp.asarray(r.normal(size=(6, C)))
  col_ok = jnp.asarray(np.arange(C) != 2)  # a padding column

  def unit(x):
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)

  stats = {"mean": jnp.float64(20.0), "std": jnp.float64(100.0)}
  heads = [("margin", {"scale": 16.0, "m2": 0.5}), ("eqface", {"scale": 16.0, "m2": 0.5}),
           ("adaface", {"scale": 16.0})]
  for head, kw in heads:
    def loss(x, w, q, blocked, head=head, kw=kw):
      xn, scale = unit(x), 1.0 / jnp.linalg.norm(w, axis=0)
      cos = xn @ (w * scale)
      lab_c, c_t = margins.target_cosines(cos, lab)
      row = q if head == "eqface" else norms
      terms = margin_ce.target_terms(head, jax.lax.stop_gradient(c_t), lab_c, kw, row=row,
                                     stats=stats if head == "adaface" else None)
      if blocked:
        ce = margin_ce.matmul_cross_entropy(xn, w, scale, terms, col_ok=col_ok,
                                            chunk_classes=width)
      else:
        ce = margin_ce.fused_cross_entropy(cos, terms, col_ok=col_ok)
      return jnp.sum(g * ce)

    ref = jax.value_and_grad(loss, (0, 1, 2))(x, w, q, False)
    got = jax.jit(jax.value_and_grad(loss, (0, 1, 2)), static_argnums=3)(x, w, q, True)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-12, atol=0)
    for a, b in zip(got[1], ref[1]):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=head)
    assert float(jnp.abs(got[1][1]).max()) > 1e-3
    if head == "eqface":
      assert float(jnp.abs(got[1][2]).max()) > 1e-3
