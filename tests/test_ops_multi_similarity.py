"""jaxset.ops.multi_similarity: the MS loss and miner (Wang et al., CVPR 2019)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxset.ops import multi_similarity as ms


def _batch(rng, p=3, k=3, d=5):
  labels = np.repeat(np.arange(p), k)
  e = rng.normal(size=(p * k, d)) + 2.0 * rng.normal(size=(p, d))[labels]
  e /= np.linalg.norm(e, axis=1, keepdims=True)
  return jnp.asarray(e), jnp.asarray(labels)


def _paper_loss(s, pos, neg, alpha=2.0, beta=50.0, lam=1.0):
  """The paper's per-anchor loss, written out pair by pair (float64 numpy)."""
  s, pos, neg = np.asarray(s, np.float64), np.asarray(pos), np.asarray(neg)
  out = []
  for i in range(s.shape[0]):
    lp = np.log(1 + sum(np.exp(-alpha * (s[i, k] - lam)) for k in np.flatnonzero(pos[i])))
    ln = np.log(1 + sum(np.exp(beta * (s[i, k] - lam)) for k in np.flatnonzero(neg[i])))
    out.append(lp / alpha + ln / beta)
  return np.array(out)


def _paper_weights(s, pos, neg, alpha=2.0, beta=50.0, lam=1.0):
  """dL_i/dS_ij from the paper's w+ and w- in their original (unrearranged) form."""
  s = np.asarray(s, np.float64)
  g = np.zeros_like(s)
  for i in range(s.shape[0]):
    P, N = np.flatnonzero(pos[i]), np.flatnonzero(neg[i])
    for j in P:
      g[i, j] = -1 / (np.exp(alpha * (s[i, j] - lam)) + sum(np.exp(-alpha * (s[i, k] - s[i, j]))
                                                            for k in P))
    for j in N:
      g[i, j] = 1 / (np.exp(beta * (lam - s[i, j])) + sum(np.exp(beta * (s[i, k] - s[i, j]))
                                                          for k in N))
  return g


def _plain(s, pos, neg, alpha=2.0, beta=50.0, lam=1.0):
  """The loss as plain JAX (autodiff's reference): no log-sum-exp shift, no custom_vjp."""
  lp = jnp.log1p(jnp.sum(jnp.where(pos, jnp.exp(-alpha * (s - lam)), 0), axis=-1))
  ln = jnp.log1p(jnp.sum(jnp.where(neg, jnp.exp(beta * (s - lam)), 0), axis=-1))
  return lp / alpha + ln / beta


def test_loss_and_gradient_equal_the_papers_formulas(x64):
  e, labels = _batch(np.random.default_rng(0))
  s = e @ e.T
  pos, neg = ms.label_pair_masks(labels)
  got = ms.multi_similarity_loss(s, pos, neg)
  np.testing.assert_allclose(got, _paper_loss(s, pos, neg), rtol=1e-12)
  ct = jnp.asarray(np.random.default_rng(1).uniform(0.5, 1.5, size=9))
  g = jax.grad(lambda s: jnp.sum(ct * ms.multi_similarity_loss(s, pos, neg)))(s)
  np.testing.assert_allclose(g, np.asarray(ct)[:, None] * _paper_weights(s, pos, neg),
                             rtol=1e-10, atol=1e-14)
  # The same with other hyper-parameters (GSV-Cities': alpha 1, base 0).
  got = ms.multi_similarity_loss(s, pos, neg, alpha=1.0, beta=50.0, lam=0.0)
  np.testing.assert_allclose(got, _paper_loss(s, pos, neg, 1.0, 50.0, 0.0), rtol=1e-12)


def test_custom_vjp_equals_autodiff_and_finite_differences(x64):
  e, labels = _batch(np.random.default_rng(2))
  pos, neg = ms.label_pair_masks(labels)
  s = e @ e.T
  f = lambda s: jnp.sum(jnp.sin(3 * ms.multi_similarity_loss(s, pos, neg, beta=5.0)))  # noqa: E731
  r = lambda s: jnp.sum(jnp.sin(3 * _plain(s, pos, neg, beta=5.0)))  # noqa: E731
  np.testing.assert_allclose(jax.grad(f)(s), jax.grad(r)(s), rtol=1e-10, atol=1e-14)
  check_grads(lambda s: ms.multi_similarity_loss(s, pos, neg, beta=5.0), (s,), order=1,
              modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)
  # Through the embeddings, with the miner, as training uses it.
  g = jax.grad(lambda e: jnp.mean(ms.multi_similarity_from_labels(e, labels)))(e)
  pm, nm = ms.multi_similarity_miner(s, pos, neg)
  want = jax.grad(lambda e: jnp.mean(_plain(e @ e.T, pm, nm)))(e)
  np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-14)
  check_grads(lambda e: ms.multi_similarity_from_labels(e, labels, beta=5.0), (e,), order=1,
              modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_miner_is_the_papers_rule(x64):
  rng = np.random.default_rng(3)
  e, labels = _batch(rng, p=4, k=3)
  s = np.asarray(e @ e.T)
  pos, neg = ms.label_pair_masks(labels)
  mp, mn = ms.multi_similarity_miner(s, pos, neg, epsilon=0.1)
  pos, neg = np.asarray(pos), np.asarray(neg)
  for i in range(12):
    for j in range(12):
      want_n = neg[i, j] and s[i, j] > s[i][pos[i]].min() - 0.1
      want_p = pos[i, j] and s[i, j] < s[i][neg[i]].max() + 0.1
      assert bool(mn[i, j]) == want_n and bool(mp[i, j]) == want_p
  # Mining drops something on this batch (the rule is not a no-op) ...
  assert np.asarray(mp).sum() + np.asarray(mn).sum() < pos.sum() + neg.sum()
  # ... and a bigger epsilon keeps more.
  mp2, mn2 = ms.multi_similarity_miner(s, pos, neg, epsilon=1.0)
  assert np.asarray(mp2).sum() + np.asarray(mn2).sum() > np.asarray(mp).sum() + np.asarray(mn).sum()


def test_degenerate_rows_contribute_zero(x64):
  # Row 4 has no positive (a singleton label), row 5 is unlabelled (-1).
  e = jnp.asarray(np.random.default_rng(4).normal(size=(6, 3)))
  e = e / jnp.linalg.norm(e, axis=1, keepdims=True)
  labels = jnp.asarray([0, 0, 1, 1, 2, -1])
  pos, neg = ms.label_pair_masks(labels)
  assert not np.asarray(pos[4]).any() and np.asarray(neg[4]).any()
  assert not np.asarray(pos[5]).any() and not np.asarray(neg[5]).any()
  assert not np.asarray(neg[:, 5]).any()
  s = e @ e.T
  mp, mn = ms.multi_similarity_miner(s, pos, neg)
  assert not np.asarray(mp[4]).any() and not np.asarray(mn[4]).any()  # no positive: nothing mined
  loss = ms.multi_similarity_from_labels(e, labels)
  np.testing.assert_allclose(loss[4:], 0.0)
  assert np.isfinite(np.asarray(loss)).all()
  g = jax.grad(lambda e: jnp.sum(ms.multi_similarity_from_labels(e, labels)))(e)
  assert np.isfinite(np.asarray(g)).all()
  # Unmined, the no-positive row keeps its negative term only.
  unmined = ms.multi_similarity_from_labels(e, labels, mine=False)
  np.testing.assert_allclose(unmined[4], _paper_loss(s, pos, neg)[4], rtol=1e-12)
  assert float(unmined[4]) > 0
  # Nothing at all: 0 and zero gradient; beta = 50 at S = 1 does not overflow.
  z = jnp.zeros((3, 3), bool)
  np.testing.assert_allclose(ms.multi_similarity_loss(jnp.ones((3, 3)), z, z), 0.0)
  eye = jnp.eye(2, dtype=bool)
  big = ms.multi_similarity_loss(jnp.full((2, 2), 1.0), eye, ~eye,
                                 lam=-10.0)
  assert np.isfinite(np.asarray(big)).all()


def test_jit_vmap_and_bad_input():
  e, labels = _batch(np.random.default_rng(5))
  e = e.astype(jnp.float32)
  want = ms.multi_similarity_from_labels(e, labels)
  np.testing.assert_allclose(jax.jit(ms.multi_similarity_from_labels)(e, labels), want, rtol=1e-6)
  stacked = jax.vmap(ms.multi_similarity_from_labels)(jnp.stack([e, e]),
                                                      jnp.stack([labels, labels]))
  np.testing.assert_allclose(stacked[1], want, rtol=1e-6)
  with pytest.raises(ValueError, match="pos_mask"):
    ms.multi_similarity_loss(jnp.zeros((3, 3)), jnp.zeros((3, 2), bool), jnp.zeros((3, 3), bool))
  with pytest.raises(ValueError, match="labels"):
    ms.multi_similarity_from_labels(e, labels[:3])
