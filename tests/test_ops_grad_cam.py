"""jaxset.ops.attention.grad_cam: values, batching, normalisation, and gradients of gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxset.ops.attention import grad_cam
from jaxset.ops.losses import attention_consistency_loss


def _score(weight, head):
  return lambda a: jnp.tanh(jnp.mean(a, axis=(1, 2)) @ weight) @ head


def test_matches_hand_computed_grad_cam():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
  k = rng.standard_normal((3, 4, 5)).astype(np.float32)
  # score_b = sum_hwc K * A_b: d score / dA = K, alpha_c = mean_hw K[..., c].
  cam = grad_cam(lambda x: jnp.sum(x * k, axis=(1, 2, 3)), a)
  alpha = k.mean((0, 1))
  want = np.maximum(np.einsum("bhwc,c->bhw", a, alpha), 0)
  np.testing.assert_allclose(cam, want, rtol=1e-5, atol=1e-6)
  assert cam.shape == (2, 3, 4)


def test_batched_equals_one_example_at_a_time():
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.standard_normal((4, 3, 3, 2)), jnp.float32)
  score = _score(jnp.asarray(rng.standard_normal((2, 3)), jnp.float32),
                 jnp.asarray(rng.standard_normal(3), jnp.float32))
  batched = grad_cam(score, a)
  singles = jnp.concatenate([grad_cam(score, a[i:i + 1]) for i in range(4)])
  np.testing.assert_allclose(batched, singles, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jax.jit(lambda a: grad_cam(score, a))(a), batched, rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_allclose(jax.vmap(lambda x: grad_cam(score, x[None])[0])(a), batched,
                             rtol=1e-6, atol=1e-7)


def test_normalize_range_and_all_zero_map():
  rng = np.random.default_rng(2)
  a = jnp.asarray(np.abs(rng.standard_normal((2, 3, 3, 2))), jnp.float32)
  cam = grad_cam(lambda x: jnp.sum(x, axis=(1, 2, 3)), a, normalize=True)
  np.testing.assert_allclose(cam.max(axis=(1, 2)), [1.0, 1.0], rtol=1e-6)
  assert (cam >= 0).all()
  # A negative score gradient gives an all-zero map: it stays zero, finite gradient.
  f = lambda x: jnp.sum(grad_cam(lambda y: -jnp.sum(y, axis=(1, 2, 3)), x, normalize=True))
  assert not np.asarray(grad_cam(lambda y: -jnp.sum(y, axis=(1, 2, 3)), a, normalize=True)).any()
  assert np.isfinite(jax.grad(f)(a)).all()


def test_signed_map_is_min_max_normalised_and_never_blank():
  rng = np.random.default_rng(4)
  a = jnp.asarray(np.abs(rng.standard_normal((3, 4, 3, 2))), jnp.float32)
  k = jnp.asarray(rng.standard_normal((4, 3, 2)), jnp.float32)
  score = lambda x: -jnp.sum(x * k, axis=(1, 2, 3))
  raw = np.einsum("bhwc,c->bhw", np.asarray(a), -np.asarray(k).mean((0, 1)))
  np.testing.assert_allclose(grad_cam(score, a, relu=False), raw, rtol=1e-5, atol=1e-6)
  low, high = raw.min((1, 2), keepdims=True), raw.max((1, 2), keepdims=True)
  signed = grad_cam(score, a, normalize=True, relu=False)
  np.testing.assert_allclose(signed, (raw - low) / (high - low), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(signed.max((1, 2)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(signed.min((1, 2)), 0.0, atol=1e-6)
  # A score that falls with every activation blanks the ReLU map but not the signed one.
  neg = lambda x: -jnp.sum(x, axis=(1, 2, 3))
  assert not np.asarray(grad_cam(neg, a, normalize=True)).any()
  assert (np.asarray(grad_cam(neg, a, normalize=True, relu=False)).max((1, 2)) == 1).all()
  # A constant map has no range: zeros, with a finite gradient.
  flat = jnp.ones((1, 2, 2, 1))
  assert not np.asarray(grad_cam(neg, flat, normalize=True, relu=False)).any()
  f = lambda x: jnp.sum(grad_cam(neg, x, normalize=True, relu=False))
  assert np.isfinite(jax.grad(f)(flat)).all()


def test_gradient_of_gradient_matches_finite_differences(x64):
  """CASN trains through Grad-CAM: d loss(grad_cam(W)) / dW against central differences."""
  rng = np.random.default_rng(3)
  fa, fb = jnp.asarray(rng.standard_normal((2, 2, 3, 3, 2)))
  head = jnp.asarray(rng.standard_normal(3))
  same = jnp.array([1, 1])

  def loss(weight, normalize, relu):
    score = _score(weight, head)
    cam = lambda f: grad_cam(score, f, normalize=normalize, relu=relu)
    return jnp.sum(attention_consistency_loss(cam(fa), cam(fb), same, threshold=0.0, size=5))

  weight = jnp.asarray(rng.standard_normal((2, 3)))
  for normalize, relu in ((False, True), (True, True), (True, False)):
    g = np.asarray(jax.grad(loss)(weight, normalize, relu))
    fd = np.zeros_like(g)
    for idx in np.ndindex(g.shape):
      e = np.zeros(g.shape)
      e[idx] = 1e-6
      fd[idx] = (loss(weight + e, normalize, relu) - loss(weight - e, normalize, relu)) / 2e-6
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8)
    assert np.abs(g).max() > 0


def test_bad_shapes_name_the_argument():
  with pytest.raises(ValueError, match="^feature_map must"):
    grad_cam(lambda x: x.sum(), jnp.ones((2, 3, 4)))
  with pytest.raises(ValueError, match=r"^score_fn\(feature_map\) must"):
    grad_cam(lambda x: x.sum(), jnp.ones((2, 3, 4, 1)))
