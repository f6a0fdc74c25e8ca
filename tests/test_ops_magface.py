"""MagFace (Meng et al., CVPR 2021) through the head spec, against the official loss.

The reference below is written from the paper and the official code's
semantics (MagLinear + MagLoss): the magnitude a = ||x|| clamped to
[l_a, u_a]; margin m(a) linear from l_m to u_m; the target
cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m) with
sin(theta) = sqrt(1 - cos^2), replaced by cos(theta) - m sin(m) where
cos(theta) <= cos(pi - m); logits scaled by s; loss = mean cross-entropy +
lambda_g * mean(1/a + a/u_a^2). Gradients come from autodiff of that
reference, so they include the magnitude's gradient through m(a) and g(a).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from jaxset import ops
from jaxset.ops import margins
from jaxset.ops import partial_fc as pfc

B, D, C = 12, 6, 9
KW = dict(scale=16.0, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0)


def official_loss(x, w, labels, *, scale, l_a, u_a, l_m, u_m, lambda_g):
  """The official MagFace loss (mean over the batch), from its semantics."""
  a = jnp.clip(jnp.linalg.norm(x, axis=1, keepdims=True), l_a, u_a)
  m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
  cos = (x / jnp.linalg.norm(x, axis=1, keepdims=True)) @ (w / jnp.linalg.norm(w, axis=0))
  cos = jnp.clip(cos, -1, 1)
  sin = jnp.sqrt(1.0 - cos ** 2)
  cos_m = cos * jnp.cos(m) - sin * jnp.sin(m)
  cos_m = jnp.where(cos > jnp.cos(jnp.pi - m), cos_m, cos - jnp.sin(jnp.pi - m) * m)
  one_hot = jax.nn.one_hot(labels, w.shape[1])
  logits = scale * (one_hot * cos_m + (1 - one_hot) * cos)
  loss_id = jnp.mean(optax.softmax_cross_entropy(logits, one_hot))
  loss_g = jnp.mean(1.0 / a + a / u_a ** 2)
  return loss_id + lambda_g * loss_g


def _inputs(seed=0):
  r = np.random.default_rng(seed)
  # Magnitudes below l_a, inside, above u_a.
  x = r.normal(size=(B, D))
  x *= (r.uniform(5.0, 130.0, B) / np.linalg.norm(x, axis=1))[:, None]
  w = r.normal(size=(D, C))
  labels = r.integers(0, C, B)
  return jnp.asarray(x), jnp.asarray(w), jnp.asarray(labels)


def _cos(x, w):
  return (x / jnp.linalg.norm(x, axis=1, keepdims=True)) @ (w / jnp.linalg.norm(w, axis=0))


def _ours_logits(x, w, labels):
  cos = _cos(x, w)
  logits, reg = ops.magface_logits(cos, jnp.linalg.norm(x, axis=1), labels, **KW)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.mean(ce + reg)


def _ours_fused(x, w, labels):
  cos = _cos(x, w)
  return jnp.mean(ops.magface_cross_entropy(cos, jnp.linalg.norm(x, axis=1), labels, **KW))


@pytest.mark.parametrize("ours", [_ours_logits, _ours_fused], ids=["logits", "fused"])
def test_loss_and_gradients_equal_the_official_loss(x64, ours):
  x, w, labels = _inputs()
  want = jax.value_and_grad(official_loss, (0, 1))(x, w, labels, **KW)
  got = jax.value_and_grad(ours, (0, 1))(x, w, labels)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
  for g, h in zip(got[1], want[1]):
    np.testing.assert_allclose(g, h, rtol=1e-9, atol=1e-12)


def test_magnitude_gradient_is_the_papers(x64):
  """dL/da alone (not drowned by dL/dcos): -s g_y sin(theta + m) m'(a) + lambda_g g'(a)."""
  r = np.random.default_rng(3)
  cos = jnp.asarray(r.uniform(-0.5, 0.9, (4, C)))
  a = jnp.asarray([5.0, 30.0, 80.0, 120.0])
  labels = jnp.asarray([0, 1, 2, 3])
  g = jax.grad(lambda a: jnp.sum(ops.magface_cross_entropy(cos, a, labels, **KW)))(a)
  logits, _ = ops.magface_logits(cos, a, labels, **KW)
  p = jax.nn.softmax(logits, axis=1)[jnp.arange(4), labels]
  m = margins.magface_margin(a)
  theta = jnp.arccos(cos[jnp.arange(4), labels])
  inside = (a >= 10) & (a <= 110)
  want = jnp.where(inside, (p - 1) * 16.0 * -jnp.sin(theta + m) * 0.35 / 100
                   + 35.0 * (1 / 110 ** 2 - 1 / a ** 2), 0.0)
  np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-14)
  assert float(jnp.abs(g[1:3]).min()) > 1e-3 and not g[0] and not g[3]


def test_larger_magnitude_gets_a_larger_margin():
  cos = jnp.full((2, 3), 0.3)
  logits, reg = ops.magface_logits(cos, jnp.array([20.0, 100.0]), jnp.array([0, 0]))
  assert float(logits[1, 0]) < float(logits[0, 0]) < float(logits[0, 1])
  # g is convex with its minimum at u_a: the larger magnitude is regularised less.
  assert float(reg[1]) < float(reg[0])


def test_partial_fc_magface_equals_the_unsharded_head(x64):
  x, w, labels = _inputs(1)
  labels = labels.at[2].set(-1)
  devs = np.asarray(jax.devices()[:4]).reshape(2, 2)
  mesh = Mesh(devs, ("data", "model"))

  def sharded(x, w):
    out = pfc.partial_fc_cross_entropy(x, labels, jnp.pad(w, ((0, 0), (0, 3))), mesh=mesh,
                                       num_classes=C, head="magface", head_kwargs=KW,
                                       norms=jnp.linalg.norm(x, axis=1))
    return jnp.sum(out.ce) / jnp.sum(labels >= 0)

  def unsharded(x, w):
    cos = _cos(x, w)
    ce = ops.magface_cross_entropy(cos, jnp.linalg.norm(x, axis=1), labels, **KW)
    return jnp.sum(ce) / jnp.sum(labels >= 0)

  want = jax.value_and_grad(unsharded, (0, 1))(x, w)
  got = jax.jit(jax.value_and_grad(sharded, (0, 1)))(x, w)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-10)
  np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-8, atol=1e-12)
  np.testing.assert_allclose(got[1][1][:, :C], want[1][1], rtol=1e-8, atol=1e-12)
